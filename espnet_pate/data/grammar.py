"""A limited-domain grammar of spoken voice-assistant requests, with vocabulary withheld from public transcripts.

Sentences are lower-case words separated by single spaces, numbers spelled out ("set an alarm for seven thirty
a m"). The grammar is a small context-free one: a slot `{x}` expands to one of its alternatives, chosen
uniformly, and alternatives may hold slots themselves.

Two domains:
- `public`: what transcribed public speech contains. Public names and places, all request types but the
  withheld ones.
- `full`: what everything else contains (sensitive, public untranscribed, dev, test): every name, place and
  request type. Sensitive requests thus hold names, places and a whole request type that no public transcript
  has, so only the sensitive data (or the teachers' votes) can teach them.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Set, Tuple

PUBLIC = "public"
FULL = "full"

PUBLIC_NAMES = [
    "anna", "david", "maria", "james", "sarah", "peter", "emma", "daniel", "laura", "michael", "sophie",
    "thomas", "julia", "robert", "lucy", "george", "helen", "simon", "kate", "oliver", "grace", "martin",
    "alice", "paul",
]
WITHHELD_NAMES = [
    "fatima", "priya", "rajesh", "olga", "ivan", "yuki", "kenji", "ingrid", "lars", "chiara", "matteo",
    "aisha", "kwame", "nadia", "hannah", "victor",
]
PUBLIC_PLACES = [
    "london", "paris", "berlin", "madrid", "rome", "boston", "chicago", "dublin", "toronto", "sydney", "tokyo",
    "vienna", "oslo", "lisbon", "prague", "denver", "seattle", "miami", "glasgow", "manchester",
]
WITHHELD_PLACES = [
    "nairobi", "lagos", "cairo", "mumbai", "delhi", "jakarta", "manila", "lima", "bogota", "warsaw",
    "helsinki", "edinburgh", "budapest", "istanbul",
]

REQUEST_TYPES = ["alarm", "weather", "call", "music", "reminder", "navigation", "conversion"]
DEFAULT_WITHHELD_TYPES = ("navigation",)


@dataclass(frozen=True)
class Withheld:
    """What public transcripts never hold, and how often the other domain draws it.

    types: request types absent from the public domain (all their words are withheld unless public elsewhere).
    names, places: how many of WITHHELD_NAMES / WITHHELD_PLACES (the first ones) exist at all.
    share: the chance that a name or place slot outside the public domain draws a withheld value; None draws
        uniformly over public and withheld values alike. A few withheld words at a high share make every
        teacher of a finely split sensitive set see each of them several times.
    """

    types: Tuple[str, ...] = DEFAULT_WITHHELD_TYPES
    names: int = len(WITHHELD_NAMES)
    places: int = len(WITHHELD_PLACES)
    share: Optional[float] = None

    def __post_init__(self):
        object.__setattr__(self, "types", tuple(self.types))
        unknown = set(self.types) - set(REQUEST_TYPES)
        if unknown:
            raise ValueError(f"unknown request types {sorted(unknown)}; known: {REQUEST_TYPES}")
        if set(self.types) == set(REQUEST_TYPES):
            raise ValueError("at least one request type must stay public")
        if not (0 <= self.names <= len(WITHHELD_NAMES) and 0 <= self.places <= len(WITHHELD_PLACES)):
            raise ValueError(f"withheld names must be 0-{len(WITHHELD_NAMES)} and places 0-{len(WITHHELD_PLACES)}")
        if self.share is not None and not (0.0 <= self.share <= 1.0):
            raise ValueError(f"withheld share must be a probability, not {self.share}")


def _number_words(n: int) -> str:
    ones = "one two three four five six seven eight nine".split()
    teens = "ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
    tens = "twenty thirty forty fifty sixty seventy eighty ninety".split()
    if n >= 100:
        rest = _number_words(n % 100) if n % 100 else ""
        return f"{ones[n // 100 - 1]} hundred {rest}".strip()
    if n >= 20:
        return f"{tens[n // 10 - 2]} {ones[n % 10 - 1]}" if n % 10 else tens[n // 10 - 2]
    return teens[n - 10] if n >= 10 else ones[n - 1]


def _unit_pairs(units: Sequence[str]) -> List[Tuple[str, str]]:
    return [(a, b) for a in units for b in units if a != b]


_HOURS = [_number_words(h) for h in range(1, 13)]
_MINUTES = ["oh five", "ten", "fifteen", "twenty", "thirty", "forty", "forty five", "fifty"]
_CONVERSION_UNITS = [
    ["miles", "kilometers", "meters", "feet", "inches", "centimeters", "yards"],
    ["pounds", "kilograms", "ounces", "grams"],
    ["liters", "gallons", "cups", "milliliters", "pints", "teaspoons", "tablespoons"],
]

_SHARED_SLOTS: Dict[str, List[str]] = {
    "polite": ["", "", "", "", "please", "hey", "can you", "could you please"],
    "end": ["", "", "", "", "", "please", "thanks", "thank you"],
    "hour": _HOURS,
    "number": [_number_words(n) for n in range(2, 100)] + ["a hundred", "two hundred", "five hundred"],
    "small_number": [_number_words(n) for n in range(1, 11)],
    "time": [f"{h} {ap}" for h in _HOURS for ap in ("a m", "p m")]
    + [f"{h} {m} {ap}" for h in _HOURS for m in _MINUTES for ap in ("a m", "p m")]
    + [f"{q} {h}" for q in ("half past", "quarter past", "quarter to") for h in _HOURS]
    + ["noon", "midnight", "{hour} in the morning", "{hour} in the evening"],
    "day": ["today", "tomorrow", "tonight", "this weekend", "next week", "this afternoon", "this evening",
            "tomorrow morning", "tomorrow night"]
    + [f"on {d}" for d in "monday tuesday wednesday thursday friday saturday sunday".split()],
    "duration": ["{number} minutes", "{number} seconds", "{small_number} hours", "one minute", "an hour",
                 "half an hour", "an hour and a half"],
    "message": ["i am running late", "i will be home soon", "i am on my way", "see you {day}", "dinner is ready",
                "call me back", "happy birthday", "thank you so much", "the meeting is cancelled",
                "i will call you later", "can we talk {day}", "do not forget the keys", "good night",
                "where are you", "i left my wallet at home", "the kids are asleep"],
    "genre": ["jazz", "rock", "pop", "classical", "country", "blues", "reggae", "folk", "soul", "disco", "metal",
              "piano", "dance", "opera"],
    "playlist": ["workout", "morning", "party", "dinner", "study", "relaxing", "running", "sleep", "favorite",
                 "summer"],
    "room": ["kitchen", "living room", "bedroom", "bathroom", "office", "garden", "hallway", "dining room",
             "garage"],
    "task": ["buy milk", "call the dentist", "water the plants", "pay the rent", "take my medicine",
             "pick up the kids", "feed the cat", "walk the dog", "take out the trash", "send the report",
             "book a haircut", "renew my passport", "clean the kitchen", "charge my phone", "lock the door",
             "go to the gym", "pay the bills", "check the oven", "buy a birthday present", "call {name}"],
    "item": ["milk", "eggs", "bread", "butter", "cheese", "apples", "bananas", "coffee", "tea", "rice", "pasta",
             "tomatoes", "onions", "chicken", "yogurt", "oranges", "potatoes", "sugar", "flour", "juice",
             "carrots", "cereal", "olive oil", "soap"],
    "poi": ["pharmacy", "hospital", "airport", "train station", "bus stop", "gas station", "supermarket",
            "bakery", "museum", "post office", "cinema", "bank", "hotel", "restaurant", "coffee shop",
            "police station", "car wash", "stadium", "parking lot", "library"],
    "convert_to": [f"{{number}} {a} to {b}" for units in _CONVERSION_UNITS for a, b in _unit_pairs(units)]
    + ["{number} degrees fahrenheit to celsius", "{number} degrees celsius to fahrenheit"],
    "convert_in": [f"{{number}} {a} in {b}" for units in _CONVERSION_UNITS for a, b in _unit_pairs(units)]
    + ["{number} degrees fahrenheit in celsius", "{number} degrees celsius in fahrenheit"],
    "how_many": [f"how many {b} are in {{number}} {a}" for units in _CONVERSION_UNITS
                 for a, b in _unit_pairs(units)],
}

_REQUESTS: Dict[str, List[str]] = {
    "alarm": [
        "{polite} set an alarm for {time} {end}",
        "{polite} set an alarm for {time} {day}",
        "{polite} wake me up at {time} {day}",
        "{polite} cancel my alarm for {time}",
        "{polite} turn off the {time} alarm",
        "{polite} set a timer for {duration} {end}",
        "{polite} start a {duration} timer",
        "{polite} snooze the alarm for {duration}",
        "how much time is left on my timer",
    ],
    "weather": [
        "what is the weather like in {place} {day}",
        "what is the weather {day} in {place}",
        "will it rain in {place} {day}",
        "is it going to snow in {place} {day}",
        "how hot will it be in {place} {day}",
        "what is the temperature in {place} right now",
        "do i need an umbrella in {place} {day}",
        "is it windy in {place} {day}",
        "what is the forecast for {place} {day}",
    ],
    "call": [
        "{polite} call {name} {end}",
        "{polite} call {name} at {home_work}",
        "{polite} video call {name}",
        "{polite} send a message to {name} saying {message}",
        "{polite} text {name} {message}",
        "{polite} tell {name} that {message}",
        "{polite} read my messages from {name}",
        "did {name} call me {day}",
    ],
    "music": [
        "{polite} play some {genre} music {end}",
        "{polite} play {genre} music in the {room}",
        "{polite} play my {playlist} playlist {end}",
        "{polite} play my {playlist} playlist in the {room}",
        "{polite} shuffle my {playlist} playlist",
        "{polite} set the volume to {small_number} {end}",
        "{polite} turn the volume {up_down} in the {room}",
        "{polite} turn the music {up_down} {end}",
        "{polite} skip this song",
        "{polite} pause the music in the {room}",
        "what song is this",
    ],
    "reminder": [
        "{polite} remind me to {task} at {time}",
        "{polite} remind me to {task} {day}",
        "{polite} add {item} to my shopping list",
        "{polite} add {item} and {item} to my shopping list",
        "{polite} remove {item} from my shopping list",
        "what is on my calendar {day}",
        "{polite} add a meeting with {name} {day} at {time}",
    ],
    "navigation": [
        "{polite} navigate to {place} {end}",
        "{polite} navigate to the nearest {poi}",
        "{polite} give me directions to {place}",
        "{polite} give me directions to the {poi}",
        "how long is the drive to {place}",
        "how far is it to the nearest {poi}",
        "{polite} find the nearest {poi} {end}",
        "{polite} take me to the {poi} in {place}",
        "is there traffic on the way to the {poi}",
        "{polite} avoid highways on the route to {place}",
        "when will i arrive in {place}",
        "{polite} show me the route to the {poi}",
        "{polite} start walking directions to the {poi}",
    ],
    "conversion": [
        "{polite} convert {convert_to} {end}",
        "what is {convert_in}",
        "{how_many}",
        "how much is {convert_in}",
    ],
}

_EXTRA_SLOTS = {"home_work": ["home", "work", "the office"], "up_down": ["up", "down"]}
_SLOT = re.compile(r"\{(\w+)\}")
_SPOKEN_FORM = [(re.compile(r"\ba m\b"), "a.m."), (re.compile(r"\bp m\b"), "p.m.")]


class Grammar:
    """The request grammar of one domain; `withheld` says what the public domain lacks."""

    def __init__(self, domain: str, withheld: Withheld = Withheld()):
        if domain not in (PUBLIC, FULL):
            raise ValueError(f"domain must be '{PUBLIC}' or '{FULL}', not '{domain}'")
        public = domain == PUBLIC
        self.types = [t for t in REQUEST_TYPES if not (public and t in withheld.types)]
        self.slots: Dict[str, List[str]] = {**_SHARED_SLOTS, **_EXTRA_SLOTS}
        # slot -> (public values, withheld values, chance of a withheld one) where the draw is weighted
        self.split: Dict[str, Tuple[List[str], List[str], float]] = {}
        for slot, public_values, withheld_values in (("name", PUBLIC_NAMES, WITHHELD_NAMES[:withheld.names]),
                                                     ("place", PUBLIC_PLACES, WITHHELD_PLACES[:withheld.places])):
            extra = [] if public else withheld_values
            self.slots[slot] = public_values + extra
            if extra and withheld.share is not None:
                self.split[slot] = (public_values, extra, withheld.share)
        for t in self.types:
            self.slots["request_" + t] = _REQUESTS[t]

    def sample(self, rng: random.Random) -> Tuple[str, str]:
        """One (request type, sentence)."""
        rtype = rng.choice(self.types)
        return rtype, " ".join(self._expand("{request_" + rtype + "}", rng).split())

    def _expand(self, template: str, rng: random.Random) -> str:
        return _SLOT.sub(lambda m: self._expand(self._draw(m.group(1), rng), rng), template)

    def _draw(self, slot: str, rng: random.Random) -> str:
        if slot in self.split:
            public_values, withheld_values, share = self.split[slot]
            return rng.choice(withheld_values if rng.random() < share else public_values)
        return rng.choice(self.slots[slot])

    def vocabulary(self) -> Set[str]:
        """Every word this domain can produce."""
        words: Set[str] = set()
        seen: Set[str] = set()
        todo = ["request_" + t for t in self.types]
        while todo:
            slot = todo.pop()
            if slot in seen:
                continue
            seen.add(slot)
            for alt in self.slots[slot]:
                todo.extend(_SLOT.findall(alt))
                words.update(_SLOT.sub(" ", alt).split())
        return words


def withheld_vocabulary(withheld: Withheld = Withheld()) -> Set[str]:
    """Words that sensitive speech can hold and public transcripts never do."""
    return Grammar(FULL, withheld).vocabulary() - Grammar(PUBLIC, withheld).vocabulary()


def spoken_form(sentence: str) -> str:
    """The text to give a synthesiser so that it says what the transcript says ("a m" is read as letters)."""
    for pattern, spoken in _SPOKEN_FORM:
        sentence = pattern.sub(spoken, sentence)
    return sentence


def sample_sentences(
    requests: Mapping[str, Tuple[str, int]],
    seed: int,
    withheld: Withheld = Withheld(),
    max_words: int = 12,
) -> Dict[str, List[Tuple[str, str]]]:
    """Draw `n` distinct (request type, sentence) pairs per set from `requests = {set: (domain, n)}`.

    No sentence appears twice anywhere, so sets never share a sentence. Sets are drawn in the given order, each
    from its own seeded generator: a set's sentences depend only on the seed and the sets drawn before it.
    """
    grammars = {d: Grammar(d, withheld) for d in (PUBLIC, FULL)}
    taken: Set[str] = set()
    out: Dict[str, List[Tuple[str, str]]] = {}
    for name, (domain, n) in requests.items():
        rng = random.Random(f"{seed}/sentences/{name}")
        picked: List[Tuple[str, str]] = []
        attempts = 0
        while len(picked) < n:
            attempts += 1
            if attempts > 50 * n + 1000:
                raise RuntimeError(f"cannot draw {n} new distinct sentences for '{name}' from the grammar")
            rtype, sentence = grammars[domain].sample(rng)
            if sentence in taken or len(sentence.split()) > max_words:
                continue
            taken.add(sentence)
            picked.append((rtype, sentence))
        out[name] = picked
    return out
