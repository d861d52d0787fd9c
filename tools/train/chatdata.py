"""Synthetic multi-turn chat dialogues for models/warmkv-chat, generated offline and deterministically.

Sources: the `countries-list` npm package (MIT) for country facts; word, name and phrase lists written here.
Every task has training phrasings and held-out phrasings, and some entities (names, colours, cities,
countries) are held out too: the held-out ones only ever appear in the evaluation cases (`make_eval`).
"""
import json
import os
import random

from chatml import tools_system_text

# ---------------------------------------------------------------- entities

TRAIN_NAMES = (
    "Alice Bob Carol David Emma Frank Grace Henry Isla Jack Karen Leo Maria Noah Olivia Peter Quinn Rosa Sam "
    "Tara Uma Victor Wendy Xavier Yara Zoe Adam Bella Chris Diana Ethan Fiona George Hannah Ivan Julia Kevin "
    "Laura Mike Nina Oscar Paula Ryan Sara Tom Ursula Vera Will Amy Ben Clara Dan Eva Felix Gina Hugo Iris "
    "Jonas Kim Liam Mia Nora Owen Pia Ralph Sofia Theo Ada Brian Cathy Derek Ella Fred Hazel Ian Jane Kyle "
    "Lily Max Nadia Omar Priya Rita Simon Tina Uri Vince Wanda Yusuf Zara Anna Bruno Chloe Dmitri Elena "
    "Farah Gustav Helen Ingrid James Keiko Lucas Marta Nils Ola Pablo Rahul Selma Tariq Ulla Viktor Wei "
    "Yuki Ahmed Beth Carlos Daisy Emil Freya Gabriel Heidi Igor Jasmine Karl Lena Mateo Nico Olga Pedro"
).split()
HELD_NAMES = "Beatrix Cyrus Delphine Edgar Florian Greta Horatio Imogen Jasper Kasimir Lorenzo Mabel Nestor Ophelia Ruben".split()
TRAIN_COLOURS = ("red blue green yellow orange purple pink brown black white grey gold silver violet "
                 "navy maroon beige cyan magenta olive lime indigo").split()
HELD_COLOURS = "teal crimson turquoise lavender amber".split()
# more colour words for the memory task only: recall has to copy a value, not pick one of a few it knows
MORE_COLOURS = ("scarlet ruby coral salmon peach apricot mustard ochre khaki mint jade emerald sage aqua "
                "azure cobalt sapphire cerulean plum lilac mauve fuchsia rose cream ivory pearl charcoal "
                "bronze copper rust tan chestnut mahogany burgundy wine cherry lemon saffron").split()
PET_NAMES = "Rex Buddy Luna Max Bella Charlie Milo Daisy Rocky Coco Shadow Pepper Biscuit Ziggy Oreo".split()
HELD_PET_NAMES = "Pickles Waffles Noodle Tofu Marble".split()
FOODS = ("eggs milk bread apples rice cheese butter tea coffee sugar flour onions carrots potatoes beans "
         "pasta tomatoes lemons honey salt yogurt oranges bananas fish chicken soap").split()
HELD_FOODS = "mangoes peppers cereal garlic".split()
WORDS = ("cat dog house tree water apple river music table garden window school friend summer winter "
         "happy green light paper story money world night morning family letter number simple yellow "
         "orange planet rabbit bottle pencil market island forest silver thunder doctor teacher banana "
         "butter guitar library window kitchen monkey rocket coffee castle dragon flower ocean sister "
         "brother mother father little quick brown purple camera travel bridge cookie button candle").split()
HELD_WORDS = "penguin blanket tomato violin harbor".split()
CATEGORIES = {
    "colours": TRAIN_COLOURS[:12],
    "fruits": "apple banana orange pear grape lemon cherry peach plum mango melon kiwi".split(),
    "animals": "cat dog horse cow sheep lion tiger bear wolf fox rabbit mouse elephant monkey".split(),
    "days of the week": "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split(),
    "months": ("January February March April May June July August September October November "
               "December").split(),
    "vegetables": "carrot potato onion pea bean cabbage lettuce tomato pepper spinach".split(),
}
PHRASES = [
    "the sky is blue", "good morning", "I like green apples", "see you tomorrow", "the cat sat on the mat",
    "hello world", "time flies", "keep it simple", "the river runs fast", "rain in the morning",
    "a quick brown fox", "all is well", "open the window", "bread and butter", "my dog likes to run",
    "the train leaves at noon", "music makes me happy", "one two three", "the moon is bright tonight",
    "slow and steady", "we are going home", "coffee with milk", "the garden is green",
]
HELD_PHRASES = ["the lamp is on", "birds sing at dawn", "purple socks are warm"]

SYSTEM_PROMPTS = [
    "You are a helpful assistant.",
    "You are warmkv-chat, a small and friendly assistant.",
    "You are a concise assistant. Answer briefly.",
    "You are a helpful assistant. Keep answers short.",
]


_ONSETS = "b br c ch d dr f g gr h j k l m n p pr r s sh st t th tr v w z".split()
_VOWELS = "a e i o u a e io ia ea".split()
_CODAS = ["", "", "", "n", "r", "l", "s", "m", "th", "x", "nd"]


def made_up_names(count, seed, exclude):
    """Pronounceable invented names (seeded), for the memory task: values the model cannot have memorised,
    so that recall is learnt as copying. Held-out names are excluded."""
    r = random.Random(seed)
    out, seen = [], {n.lower() for n in exclude}
    while len(out) < count:
        name = "".join(r.choice(_ONSETS) + r.choice(_VOWELS) for _ in range(r.choice([2, 2, 3]))) + r.choice(_CODAS)
        name = name.capitalize()
        if name.lower() not in seen and 4 <= len(name) <= 10:
            seen.add(name.lower())
            out.append(name)
    return out


def load_countries(root):
    pkg = os.path.join(root, "node_modules", "countries-list")
    countries = json.load(open(os.path.join(pkg, "countries.min.json"), encoding="utf-8"))
    continents = json.load(open(os.path.join(pkg, "continents.min.json"), encoding="utf-8"))
    currencies = json.load(open(os.path.join(pkg, "currencies.min.json"), encoding="utf-8"))
    languages = json.load(open(os.path.join(pkg, "languages.min.json"), encoding="utf-8"))
    out = []
    for code in sorted(countries):
        c = countries[code]
        if c.get("partOf") or not c.get("capital") or not c.get("currency") or not c.get("languages"):
            continue
        if not c["name"].isascii() or not c["capital"].isascii():
            continue
        cur = currencies.get(c["currency"][0])
        lang = languages.get(c["languages"][0])
        if cur is None or lang is None:
            continue
        out.append({"code": code, "name": c["name"], "capital": c["capital"],
                    "continent": continents[c["continent"]], "currency": cur["name"],
                    "currency_code": c["currency"][0], "language": lang["name"]})
    return out


# ---------------------------------------------------------------- phrasings (train, held-out)

FACT_Q = {
    "capital": (["What is the capital of {c}?", "What's the capital of {c}?", "Which city is the capital of {c}?",
                 "Tell me the capital of {c}.", "Name the capital city of {c}.", "capital of {c}?",
                 "Do you know the capital of {c}?", "What city is the capital of {c}?",
                 "What is the capital city of {c}?"],
                ["Can you tell me what the capital of {c} is?", "I'd like to know the capital of {c}.",
                 "Which city serves as the capital of {c}?"]),
    "continent": (["Which continent is {c} in?", "On what continent is {c}?", "What continent is {c} on?",
                   "Tell me the continent of {c}.", "In which continent is {c}?", "continent of {c}?",
                   "Do you know which continent {c} is in?"],
                  ["Can you tell me which continent {c} is part of?", "I'd like to know the continent of {c}."]),
    "currency": (["What is the currency of {c}?", "What currency is used in {c}?", "What's the currency of {c}?",
                  "Which currency does {c} use?", "Tell me the currency of {c}.", "currency of {c}?",
                  "What money do they use in {c}?"],
                 ["Can you tell me what currency {c} uses?", "I'd like to know the currency of {c}."]),
    "language": (["What language is spoken in {c}?", "What is the main language of {c}?",
                  "Which language do people speak in {c}?", "Tell me the language of {c}.",
                  "What's the language of {c}?", "language of {c}?"],
                 ["Can you tell me what language they speak in {c}?", "I'd like to know the language of {c}."]),
}
FACT_A = {
    "capital": ["The capital of {c} is {a}.", "{a} is the capital of {c}."],
    "continent": ["{c} is in {a}."],
    "currency": ["The currency of {c} is the {a}."],
    "language": ["The main language of {c} is {a}."],
}

ARITH_Q = {
    "+": (["What is {a} plus {b}?", "What is {a} + {b}?", "{a} + {b} = ?", "Add {a} and {b}.", "{a} plus {b}?",
           "What do you get if you add {a} and {b}?"], ["How much is {a} plus {b}?", "Calculate {a} + {b}."]),
    "-": (["What is {a} minus {b}?", "What is {a} - {b}?", "{a} - {b} = ?", "Subtract {b} from {a}.",
           "{a} minus {b}?"], ["How much is {a} minus {b}?", "Calculate {a} - {b}."]),
    "*": (["What is {a} times {b}?", "What is {a} * {b}?", "{a} * {b} = ?", "Multiply {a} by {b}.",
           "{a} times {b}?"], ["How much is {a} times {b}?", "Calculate {a} * {b}."]),
}

# memory slots: (statement phrasings, acknowledgements, recall questions train, recall questions held-out, answer)
MEMORY = {
    "name": (["My name is {v}.", "Hi, I'm {v}.", "Call me {v}.", "Hello! My name is {v}.", "I am {v}."],
             ["Nice to meet you, {v}!", "Hello, {v}! How can I help you?", "Hi {v}, nice to meet you."],
             ["What is my name?", "What's my name?", "Do you remember my name?", "What did I say my name was?",
              "Who am I?"],
             ["Remind me, what is my name?", "Can you recall my name?"],
             "Your name is {v}."),
    "colour": (["My favourite colour is {v}.", "I love the colour {v}.", "My favorite color is {v}.",
                "The colour I like best is {v}."],
               ["{V} is a lovely colour.", "Got it, your favourite colour is {v}.", "Nice, {v} is a great colour."],
               ["What is my favourite colour?", "What colour do I like best?", "What's my favorite color?",
                "Do you remember my favourite colour?"],
               ["Remind me, which colour is my favourite?", "Can you recall my favourite colour?"],
               "Your favourite colour is {v}."),
    "number": (["My lucky number is {v}.", "Remember the number {v}.", "Please remember this number: {v}.",
                "My favourite number is {v}.", "The number to remember is {v}."],
               ["Got it: {v}.", "OK, I will remember {v}.", "Noted, the number is {v}."],
               ["What number did I tell you?", "What is my number?", "Which number did I ask you to remember?",
                "Do you remember my number?"],
               ["Remind me, what was the number?", "Can you recall my number?"],
               "The number is {v}."),
    "city": (["I live in {v}.", "My home town is {v}.", "I'm from {v}.", "I come from {v}."],
             ["{V} sounds like a nice place.", "Got it, you live in {v}.", "Nice, {v}!"],
             ["Where do I live?", "What is my home town?", "Where am I from?", "Do you remember where I live?"],
             ["Remind me, where do I live?", "Can you recall my home town?"],
             "You live in {v}."),
    "pet": (["My dog is called {v}.", "I have a dog named {v}.", "My dog's name is {v}."],
            ["{V} is a great name for a dog.", "Got it, your dog is {v}.", "Hello to {v}!"],
            ["What is my dog called?", "What's my dog's name?", "Do you remember my dog's name?",
             "What did I say my dog is called?"],
            ["Remind me, what is my dog's name?", "Can you recall my dog's name?"],
            "Your dog is called {v}."),
    "list": (["My shopping list is {v}.", "I need to buy {v}.", "Please remember my shopping list: {v}.",
              "Add these to my list: {v}."],
             ["Noted: {v}.", "Got it, your list is {v}.", "OK, I will remember {v}."],
             ["What is on my shopping list?", "What do I need to buy?", "What was my list?",
              "Do you remember my shopping list?"],
             ["Remind me, what is on my list?", "Can you recall my shopping list?"],
             "Your shopping list is {v}."),
}

INSTR = {
    "repeat": (["Repeat after me: {p}", "Say \"{p}\".", "Please repeat this: {p}", "Repeat: {p}",
                "Can you say \"{p}\"?"], ["Echo this back to me: {p}", "Say this back: {p}"]),
    "spell": (["Spell the word {w}.", "How do you spell {w}?", "Spell {w}.", "Please spell {w}.",
               "Spell \"{w}\" letter by letter."], ["Can you spell {w} for me?", "Write {w} letter by letter."]),
    "count": (["Count from {a} to {b}.", "Count from {a} up to {b}.", "Please count from {a} to {b}.",
               "List the numbers from {a} to {b}."], ["Count up from {a} to {b}, please.",
                                                      "Give me the numbers {a} to {b}."]),
    "list": (["List {k} {cat}.", "Name {k} {cat}.", "Tell me {k} {cat}.", "Can you list {k} {cat}?"],
             ["Give me {k} {cat}.", "Please name {k} {cat}."]),
}
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six"]

SMALLTALK = [
    (["Hello!", "Hi!", "Hello", "Hi there!", "Hey!", "Good morning!"],
     ["Hello! How can I help you today?", "Hi! What can I do for you?"]),
    (["How are you?", "How are you doing?", "How's it going?"],
     ["I'm doing well, thank you. How can I help you?", "I'm fine, thanks for asking!"]),
    (["Who are you?", "What are you?", "What is your name?", "What's your name?"],
     ["I am warmkv-chat, a small assistant model.", "My name is warmkv-chat. I am a small assistant."]),
    (["Thank you!", "Thanks!", "Thanks a lot.", "Thank you very much."],
     ["You're welcome!", "Happy to help!", "You are welcome."]),
    (["Goodbye!", "Bye!", "See you later."], ["Goodbye! Have a nice day.", "Bye! Take care."]),
    (["What can you do?", "What can you help me with?"],
     ["I can answer questions about countries, do simple arithmetic, remember what you tell me, and call tools."]),
]
STORY_Q = ["Tell me a story.", "Tell me a short story.", "Can you tell me a story?", "Write a short story.",
           "Tell me a story about a {animal}."]
STORY_ANIMALS = "cat dog fox rabbit bear owl mouse horse lion frog duck wolf".split()
STORY_PLACES = ["a small village", "a big forest", "a quiet town", "an old castle", "a green valley", "a busy city",
                "a little farm", "the mountains"]
STORY_ADJ = "little brave clever happy shy curious kind young old".split()


def story(rng, animal=None):
    animal = animal or rng.choice(STORY_ANIMALS)
    name = rng.choice(TRAIN_NAMES + PET_NAMES)
    adj = rng.choice(STORY_ADJ)
    place = rng.choice(STORY_PLACES)
    friend = rng.choice([a for a in STORY_ANIMALS if a != animal])
    forms = [
        f"Once upon a time, there was a {adj} {animal} named {name} who lived in {place}. One day, {name} met a "
        f"{friend} who was lost. {name} helped the {friend} find the way home, and they became best friends.",
        f"Once upon a time, a {adj} {animal} called {name} lived in {place}. Every morning {name} went for a walk. "
        f"One day {name} found a shiny stone and gave it to a sad {friend}. The {friend} smiled, and {name} was happy.",
        f"There was once a {adj} {animal} named {name}. {name} lived in {place} and wanted to see the sea. "
        f"After a long journey with a friendly {friend}, {name} finally saw the sea and laughed with joy.",
    ]
    return rng.choice(forms)


# ---------------------------------------------------------------- tools

def tool_defs(currency_codes):
    return {
        "get_weather": {"type": "function", "function": {
            "name": "get_weather", "description": "Get the current weather in a city",
            "parameters": {"type": "object", "properties": {
                "city": {"type": "string", "description": "The city name"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                "required": ["city"]}}},
        "get_time": {"type": "function", "function": {
            "name": "get_time", "description": "Get the current local time in a city",
            "parameters": {"type": "object", "properties": {
                "city": {"type": "string", "description": "The city name"}}, "required": ["city"]}}},
        "calculate": {"type": "function", "function": {
            "name": "calculate", "description": "Evaluate an arithmetic expression",
            "parameters": {"type": "object", "properties": {
                "expression": {"type": "string", "description": "For example 12 * 7"}},
                "required": ["expression"]}}},
        "convert_currency": {"type": "function", "function": {
            "name": "convert_currency", "description": "Convert an amount of money from one currency to another",
            "parameters": {"type": "object", "properties": {
                "amount": {"type": "number"},
                "from": {"type": "string", "description": "ISO 4217 code, for example USD"},
                "to": {"type": "string", "description": "ISO 4217 code, for example EUR"}},
                "required": ["amount", "from", "to"]}}},
        "set_reminder": {"type": "function", "function": {
            "name": "set_reminder", "description": "Set a reminder for the user",
            "parameters": {"type": "object", "properties": {
                "text": {"type": "string", "description": "What to remind the user of"},
                "time": {"type": "string", "description": "When, for example 18:30"}},
                "required": ["text", "time"]}}},
    }


TOOL_Q = {
    "get_weather": (["What's the weather in {city}?", "What is the weather like in {city}?",
                     "How is the weather in {city} today?", "Is it raining in {city}?", "Weather in {city}?",
                     "Tell me the weather in {city}."],
                    ["Can you check the weather in {city} for me?", "I'm going to {city}, what's the weather there?"]),
    "get_weather_f": (["What's the weather in {city} in fahrenheit?", "Weather in {city} in fahrenheit, please."],
                      ["Can you check the weather in {city} in fahrenheit?"]),
    "get_time": (["What time is it in {city}?", "What's the time in {city}?", "Tell me the time in {city}.",
                  "Current time in {city}?"], ["Can you check the local time in {city}?",
                                               "Do you know what time it is in {city} right now?"]),
    "calculate": (["Use the calculator: {a} * {b}", "Please calculate {a} * {b} with the tool.",
                   "Compute {a} * {b}.", "What is {a} * {b}? Use the calculator."],
                  ["Can you work out {a} * {b} with the calculator?"]),
    "convert_currency": (["Convert {n} {f} to {t}.", "How much is {n} {f} in {t}?", "Change {n} {f} into {t}.",
                          "What is {n} {f} in {t}?"], ["Can you convert {n} {f} into {t} for me?"]),
    "set_reminder": (["Remind me to {task} at {time}.", "Set a reminder to {task} at {time}.",
                      "Please remind me at {time} to {task}."], ["Can you set a reminder at {time} to {task}?"]),
}
TASKS = ["call my mother", "buy milk", "water the plants", "take my pills", "walk the dog", "pay the rent",
         "send the letter", "go to the gym", "cook dinner", "read a book"]
HELD_TASKS = ["feed the cat", "book a taxi"]
CONDITIONS = ["sunny", "cloudy", "rainy", "windy", "snowy", "foggy"]
TOOL_CURRENCIES = ["USD", "EUR", "GBP", "JPY", "CHF", "CAD", "AUD", "INR", "CNY", "SEK"]


def dumps(obj):
    """Python's json.dumps with the separators of the chat template's `tojson` (", " and ": ")."""
    return json.dumps(obj, ensure_ascii=False)


class Generator:
    def __init__(self, root, seed=20261202, split="train"):
        self.rng = random.Random(seed)
        self.split = split
        countries = load_countries(root)
        hold = random.Random(7)
        held_idx = set(hold.sample(range(len(countries)), 12))
        self.countries = [c for i, c in enumerate(countries) if i not in held_idx]
        self.held_countries = [c for i, c in enumerate(countries) if i in held_idx]
        train_cities = [c["capital"] for c in self.countries]
        self.cities = train_cities
        self.held_cities = [c["capital"] for c in self.held_countries]
        self.tools = tool_defs(TOOL_CURRENCIES)
        held = split != "train"
        self.names = HELD_NAMES if held else TRAIN_NAMES
        self.colours = HELD_COLOURS if held else TRAIN_COLOURS
        self.pets = HELD_PET_NAMES if held else PET_NAMES
        # memory values in training: the lists above plus invented names and more colours (never held-out ones)
        invented = made_up_names(3000, 11, HELD_NAMES + HELD_PET_NAMES)
        self.memory_names = self.names if held else TRAIN_NAMES + invented[:1500]
        self.memory_pets = self.pets if held else PET_NAMES + invented[1500:]
        self.memory_colours = self.colours if held else TRAIN_COLOURS + MORE_COLOURS
        self.foods = HELD_FOODS + FOODS[:6] if held else FOODS
        self.words = HELD_WORDS if held else WORDS
        self.phrases = HELD_PHRASES if held else PHRASES
        self.tasks = HELD_TASKS if held else TASKS
        self.tool_cities = self.held_cities if held else train_cities
        self.pi = 1 if held else 0  # index into (train, held-out) phrasing pairs

    # --- single exchanges: (user, assistant)
    def fact(self, relation=None, country=None):
        r = self.rng
        relation = relation or r.choice(["capital", "capital", "continent", "currency", "language"])
        c = country or r.choice(self.countries)
        q = r.choice(FACT_Q[relation][self.pi]).format(c=c["name"])
        if r.random() < 0.15:
            q = q[0].lower() + q[1:]
        a = r.choice(FACT_A[relation]).format(c=c["name"], a=c[relation])
        return q, a, c[relation]

    def arith(self):
        r = self.rng
        op = r.choice("++-*")
        if op == "+":
            a, b = r.randint(0, 50), r.randint(0, 50)
            v = a + b
        elif op == "-":
            a = r.randint(0, 60)
            b = r.randint(0, a)
            v = a - b
        else:
            a, b = r.randint(0, 12), r.randint(0, 10)
            v = a * b
        q = r.choice(ARITH_Q[op][self.pi]).format(a=a, b=b)
        return q, f"{a} {op} {b} = {v}.", str(v)

    def instruction(self):
        r = self.rng
        kind = r.choice(["repeat", "spell", "count", "list"])
        qs = INSTR[kind][self.pi]
        if kind == "repeat":
            p = r.choice(self.phrases) if r.random() < 0.6 else " ".join(r.sample(self.words if self.pi else WORDS,
                                                                                  r.randint(2, 5)))
            return r.choice(qs).format(p=p), p, p
        if kind == "spell":
            w = r.choice(self.words)
            s = "-".join(w)
            return r.choice(qs).format(w=w), s, s
        if kind == "count":
            a = r.randint(1, 15)
            b = a + r.randint(2, 9)
            s = ", ".join(str(i) for i in range(a, b + 1)) + "."
            return r.choice(qs).format(a=a, b=b), s, s
        cat = r.choice(list(CATEGORIES))
        k = r.randint(2, 5)
        items = r.sample(CATEGORIES[cat], k)
        kw = NUMBER_WORDS[k] if r.random() < 0.5 else str(k)
        ans = f"Here are {k} {cat}: " + ", ".join(items[:-1]) + " and " + items[-1] + "."
        return r.choice(qs).format(k=kw, cat=cat), ans, str(k)

    def smalltalk(self):
        r = self.rng
        if r.random() < 0.3:
            animal = r.choice(STORY_ANIMALS)
            q = r.choice(STORY_Q).format(animal=animal)
            return q, story(r, animal if "{animal}" in q or "about" in q else None), None
        qs, ans = r.choice(SMALLTALK)
        return r.choice(qs), r.choice(ans), None

    def distractor(self):
        r = self.rng.random()
        if r < 0.45:
            return self.fact()
        if r < 0.7:
            return self.arith()
        if r < 0.9:
            return self.instruction()
        return self.smalltalk()

    def memory_value(self, slot):
        r = self.rng
        if slot == "name":
            return r.choice(self.memory_names)
        if slot == "colour":
            return r.choice(self.memory_colours)
        if slot == "number":
            return str(r.randint(10, 9999))
        if slot == "city":
            return r.choice(self.tool_cities)
        if slot == "pet":
            return r.choice(self.memory_pets)
        items = r.sample(self.foods, r.randint(2, 4))
        return ", ".join(items[:-1]) + " and " + items[-1]

    # --- whole dialogues: {"messages": [...], "tools": [...] or absent, "checks": [...]}
    def memory_dialogue(self, turns=None):
        r = self.rng
        slots = r.sample(list(MEMORY), r.choice([1, 1, 2]))
        values = {s: self.memory_value(s) for s in slots}
        msgs = []
        if r.random() < 0.3:
            msgs.append({"role": "system", "content": r.choice(SYSTEM_PROMPTS)})
        for s in slots:
            st, ack, _, _, _ = MEMORY[s]
            v = values[s]
            msgs.append({"role": "user", "content": r.choice(st).format(v=v)})
            msgs.append({"role": "assistant", "content": r.choice(ack).format(v=v, V=v[0].upper() + v[1:])})
        n_distract = turns - len(slots) - 1 if turns else r.randint(0, 4)
        for _ in range(max(0, n_distract)):
            q, a, _ = self.distractor()
            msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        ask = r.choice(slots)
        _, _, rq, rq_held, ra = MEMORY[ask]
        msgs.append({"role": "user", "content": r.choice(rq_held if self.pi else rq)})
        msgs.append({"role": "assistant", "content": ra.format(v=values[ask])})
        # the recall reply is the last assistant turn: chat_prepare weights it in the loss
        return {"messages": msgs, "kind": "memory", "answer": values[ask], "slot": ask, "weight_last": True}

    def qa_dialogue(self, maker, kind, counts=(1, 1, 2, 3)):
        r = self.rng
        msgs = []
        if r.random() < 0.3:
            msgs.append({"role": "system", "content": r.choice(SYSTEM_PROMPTS)})
        for _ in range(r.choice(counts)):
            q, a, _ = maker()
            msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        return {"messages": msgs, "kind": kind}

    def tool_call(self, name):
        """(user question, tool name, arguments, tool result, final answer, expected key argument)."""
        r = self.rng
        key = name
        if name == "get_weather":
            city = r.choice(self.tool_cities)
            fahrenheit = r.random() < 0.2
            key = "get_weather_f" if fahrenheit else name
            args = {"city": city, "unit": "fahrenheit"} if fahrenheit else {"city": city}
            temp = r.randint(40, 95) if fahrenheit else r.randint(-10, 35)
            cond = r.choice(CONDITIONS)
            result = {"city": city, "temperature": temp, "unit": "fahrenheit" if fahrenheit else "celsius",
                      "condition": cond}
            deg = "degrees Fahrenheit" if fahrenheit else "degrees Celsius"
            final = f"It is {temp} {deg} and {cond} in {city}."
            q = r.choice(TOOL_Q[key][self.pi]).format(city=city)
        elif name == "get_time":
            city = r.choice(self.tool_cities)
            args = {"city": city}
            t = f"{r.randint(0, 23):02d}:{r.randint(0, 59):02d}"
            result = {"city": city, "time": t}
            final = f"It is {t} in {city}."
            q = r.choice(TOOL_Q[key][self.pi]).format(city=city)
        elif name == "calculate":
            a, b = r.randint(11, 999), r.randint(2, 99)
            args = {"expression": f"{a} * {b}"}
            result = {"result": a * b}
            final = f"{a} * {b} = {a * b}."
            q = r.choice(TOOL_Q[key][self.pi]).format(a=a, b=b)
        elif name == "convert_currency":
            f, t = r.sample(TOOL_CURRENCIES, 2)
            n = r.choice([5, 10, 20, 50, 100, 250, 1000, r.randint(1, 500)])
            args = {"amount": n, "from": f, "to": t}
            rate = round(r.uniform(0.2, 3.0), 2)
            result = {"amount": round(n * rate, 2), "currency": t}
            final = f"{n} {f} is {round(n * rate, 2)} {t}."
            q = r.choice(TOOL_Q[key][self.pi]).format(n=n, f=f, t=t)
        else:
            task = r.choice(self.tasks)
            tm = f"{r.randint(6, 22):02d}:{r.choice(['00', '15', '30', '45'])}"
            args = {"text": task, "time": tm}
            result = {"ok": True}
            final = f"OK, I will remind you to {task} at {tm}."
            q = r.choice(TOOL_Q[key][self.pi]).format(task=task, time=tm)
        return q, args, result, final

    def tool_dialogue(self):
        r = self.rng
        names = list(self.tools)
        target = r.choice(names)
        offered = [target] + r.sample([n for n in names if n != target], r.choice([0, 0, 1, 1, 2]))
        r.shuffle(offered)
        msgs = []
        if r.random() < 0.7:
            msgs.append({"role": "system", "content": r.choice(SYSTEM_PROMPTS)})
        if r.random() < 0.25:
            # a question the tools do not cover is answered directly
            q, a, _ = self.fact() if r.random() < 0.6 else self.smalltalk()
            msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        q, args, result, final = self.tool_call(target)
        msgs.append({"role": "user", "content": q})
        msgs.append({"role": "assistant", "content": "",
                     "tool_calls": [{"type": "function", "function": {"name": target, "arguments": args}}]})
        msgs.append({"role": "tool", "content": dumps(result)})
        msgs.append({"role": "assistant", "content": final})
        return {"messages": msgs, "tools": [self.tools[n] for n in offered], "kind": "tool", "tool": target,
                "arguments": args}

    def dialogue(self):
        x = self.rng.random()
        if x < 0.30:
            return self.qa_dialogue(self.fact, "fact", counts=(1, 2, 3, 4))
        if x < 0.68:
            return self.memory_dialogue()
        if x < 0.78:
            return self.tool_dialogue()
        if x < 0.85:
            return self.qa_dialogue(self.arith, "arith")
        if x < 0.94:
            return self.qa_dialogue(self.instruction, "instruction")
        return self.qa_dialogue(self.smalltalk, "smalltalk")


def make_eval(root, seed=99):
    """Held-out evaluation cases: unseen phrasings for seen countries; held-out names, colours, cities,
    phrasings for memory and tools."""
    g = Generator(root, seed=seed, split="heldout")
    r = g.rng
    facts = []
    for c in r.sample(g.countries, 60):
        for rel in ("capital", "continent", "currency", "language"):
            q, _, a = g.fact(rel, c)
            facts.append({"relation": rel, "country": c["name"], "question": q, "answer": a})
    seen = Generator(root, seed=seed + 1, split="train")
    facts_seen_phrasing = []
    for c in r.sample(g.countries, 25):
        for rel in ("capital", "continent", "currency", "language"):
            q, _, a = seen.fact(rel, c)
            facts_seen_phrasing.append({"relation": rel, "country": c["name"], "question": q, "answer": a})
    facts_unseen_entities = []
    for c in g.held_countries:
        q, _, a = g.fact("capital", c)
        facts_unseen_entities.append({"relation": "capital", "country": c["name"], "question": q, "answer": a})
    arith = []
    for _ in range(60):
        q, _, a = g.arith()
        arith.append({"question": q, "answer": a})
    memory = []
    for i in range(48):
        d = g.memory_dialogue(turns=3 + i % 4)
        users = [m["content"] for m in d["messages"] if m["role"] == "user"]
        system = d["messages"][0]["content"] if d["messages"][0]["role"] == "system" else None
        memory.append({"system": system, "user_turns": users, "slot": d["slot"], "answer": d["answer"]})
    tools = []
    names = list(g.tools)
    for i in range(50):
        target = names[i % len(names)]
        offered = [target] + r.sample([n for n in names if n != target], r.choice([0, 0, 1, 1, 2]))
        r.shuffle(offered)
        q, args, result, final = g.tool_call(target)
        defs = [g.tools[n] for n in offered]
        # the system turn's text as the template renders it with `tools` (clients without tools support
        # can send it as the system message: the prompt is the same)
        tools.append({"tools": defs, "system_text": tools_system_text(None, defs), "question": q, "tool": target, "arguments": args,
                      "result": dumps(result), "final_answer": final})
    return {
        "held_out": {"names": HELD_NAMES, "colours": HELD_COLOURS, "pet_names": HELD_PET_NAMES,
                     "words": HELD_WORDS, "phrases": HELD_PHRASES, "tasks": HELD_TASKS,
                     "countries": [c["name"] for c in g.held_countries],
                     "phrasings": {"facts": {k: v[1] for k, v in FACT_Q.items()},
                                   "arithmetic": {k: v[1] for k, v in ARITH_Q.items()},
                                   "memory_recall": {k: v[3] for k, v in MEMORY.items()},
                                   "instructions": {k: v[1] for k, v in INSTR.items()},
                                   "tools": {k: v[1] for k, v in TOOL_Q.items()}}},
        "facts": facts, "facts_seen_phrasing": facts_seen_phrasing,
        "facts_unseen_entities": facts_unseen_entities, "arithmetic": arith, "memory": memory, "tools": tools,
    }
