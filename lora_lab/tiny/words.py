"""Word pools of the pretraining corpus: everyday English, the general knowledge a base model
brings to post-training (colours, opposites, towns, units, a little Python and logic).

Names of people and towns are real-world ones; the post-training sets use invented names, so
what they teach about their entities is new to the base model.
"""

NAMES = ("Anna Ben Carla David Emma Felix Grace Hugo Ines Jonas Kira Leo Mara Nils Olga Paul Rosa Sam Tara Umar "
         "Vera Will Alice Bob Chloe Dan Eva Frank Gina Hans Iris Jack Lena Max Nora Omar Pia Ravi Sara Tom").split()
TOWNS = ("London Paris Berlin Rome Madrid Oslo Vienna Prague Dublin Lisbon Cairo Tokyo Delhi Lima Quito Sydney "
         "Toronto Boston Denver Seattle Nairobi Lagos Athens Warsaw Zurich Geneva Milan Naples Munich Hamburg").split()
ANIMALS = "cat dog horse bird fox owl goat sheep mouse bear frog duck falcon rabbit wolf deer fish whale tiger lion".split()
OBJECTS = ("book lamp chair table cup box ball key coat hat bag clock door road tree boat apple stone candle bridge "
           "mirror paper pencil button needle marble rocket window garden castle lemon cloud shell bead ribbon stamp "
           "ticket kite lantern scroll feather acorn pebble coin basket bottle card crate jar plate spoon").split()
PLACES = ("village market school river hill station park farm library forest meadow harbor canyon ocean beach "
          "kitchen garden museum bakery office").split()
COLOURS = "red blue green yellow black white grey pink brown purple orange gold silver teal violet maroon".split()
FRENCH = {"red": "rouge", "blue": "bleu", "green": "vert", "black": "noir", "white": "blanc", "yellow": "jaune",
          "grey": "gris", "pink": "rose", "brown": "brun", "purple": "violet", "orange": "orange"}
OPPOSITES = {"hot": "cold", "big": "small", "fast": "slow", "up": "down", "early": "late", "light": "dark",
             "happy": "sad", "open": "closed", "full": "empty", "old": "new", "high": "low", "soft": "hard",
             "long": "short", "wet": "dry", "near": "far", "first": "last", "true": "false", "more": "less"}
ADJECTIVES = ("small large old new quiet bright dark warm cold heavy light round tall short happy careful helpful "
              "busy calm clean empty full fast slow strange simple exact").split()
VERBS = [("sees", "saw"), ("finds", "found"), ("carries", "carried"), ("paints", "painted"), ("opens", "opened"),
         ("cleans", "cleaned"), ("moves", "moved"), ("buys", "bought"), ("gathers", "gathered"), ("keeps", "kept"),
         ("packs", "packed"), ("sells", "sold"), ("gives", "gave"), ("receives", "received"), ("collects", "collected"),
         ("fills", "filled"), ("returns", "returned"), ("shares", "shared"), ("counts", "counted"), ("writes", "wrote")]
TIMES = "morning noon afternoon evening dusk midnight".split()
CONTAINERS = "box crate jar basket bag shelf tray".split()
OPENERS = ("Let me think.", "Okay.", "Alright.", "First,", "Then,", "Finally,", "Good.", "So,", "Now,",
           "I think so.", "Let me check.", "That fits.", "Step by step:")

# Everyday sentences: the function words and common verbs of explanations, stories and word problems.
SENTENCES = (
    "This is the {n}th {obj} that {a} has found this year.",
    "Please give the {obj} to {b}. You can keep the {colour} one.",
    "We work it out carefully: {n} plus {m} is {sum}, and {n} times {m} is {prod}.",
    "{n} minus {m} is {diff}. Add {m} back and you get {n} again.",
    "{a} is {n} years old and {b} is {m} years old, so {a} is {older} than {b}.",
    "Both friends share the {obj}s equally among them. Each one gets {half} when there are {even} in all.",
    "Together they spend {n} coins. After paying, {a} keeps some change for another day.",
    "When the {obj} is full, we stop. Only then does {a} start again.",
    "If it rains, {a} stays home; else {a} walks to the {place}.",
    "The result becomes {sum} after we add {m}. We can undo this step by subtracting {m}.",
    "Find the value: {n} divided by {m} gives {q} with a remainder of {r}.",
    "Solve for the total: {m} packs of {n} {obj}s make {prod} {obj}s.",
    "In the city of {town}, the {obj} belongs to {a}. It is {colour}.",
    "Swap the two boxes, then replace the {obj} with a {obj2}.",
    "Each note is worth {m} coins, so {n} notes are worth {prod} coins per account.",
    "The balance of the account is {n}. After a refund of {m} it is {sum}.",
    "At dawn the sun rises; at dusk it sets. Another day has come and gone.",
    "Reverse the order of the list and the first item becomes the last.",
    "Spell it backwards, write it in upper case, or translate it into French.",
    "Evaluate both sides of the equation: {n} + {m} = {sum} and {sum} = {m} + {n}.",
    "Multiply {n} by {m} to get {prod}, then divide {prod} by {m} to get {n} back.",
    "A clue is given: the number is even, is less than {even2}, and is not {n}.",
    "The code prints the values in order. Python updates the variable in every step of the loop.",
    "The mean of {n} and {m} is ({n} + {m}) / 2.",
    "{a} told {b} the truth. A person who never lies is truthful; one who always lies tells a lie.",
    "In this case the answer is {sum}. In that case it would be {diff}.",
    "{a} is receiving {m} seeds from {b} and giving {n} seeds to a friend.",
    "The pool holds water. The {obj} sits on one of its sides.",
    "What do you think? I think {a} is right. What number comes next after {n}? It is {next}.",
    "Compute each part, then write down what you get at the end.",
)
