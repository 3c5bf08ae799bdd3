"""Regenerate the support profile's data: conversations between customers and the support assistant
of Voltly, a small online electronics shop (profiles/support.yaml, a conversation task).

    python scripts/make_support_data.py [--seed 20261207] [--n 420]     # data/support.jsonl

Each record is a conversation of 1-4 customer turns ending with the customer's; the earlier agent
turns are written here, by the policy. Nine intents: order status, return, refund, password,
warranty, shipping cost, damaged item, cancellation, and off-policy requests the agent must
decline (discount codes, another customer's details, price matching, legal or medical advice).
The policy card is the profile's ``teacher.system_prompt`` (every record gets it there), and each
record carries ``facts``: the short phrases of the policy a right reply must state (the judge's
rubric caps a reply that omits one at 4 of 5), and ``intent``. The same seed writes the same file.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "edgedistill" / "profiles" / "data" / "support.jsonl"

PRODUCTS = ["wireless headphones", "phone charger", "USB-C cable", "smartwatch", "bluetooth speaker",
            "laptop stand", "webcam", "mechanical keyboard", "gaming mouse", "e-reader", "power bank",
            "tablet case", "HDMI adapter", "smart plug", "fitness tracker", "portable SSD",
            "noise-cancelling earbuds", "desk lamp", "wifi router", "action camera"]
NAMES = ["Sam", "Alex", "Maria", "Tom", "Priya", "Chen", "Fatima", "Lukas", "Ana", "Joe", "Mei", "Omar"]
GREETINGS = ["Hi", "Hello", "Hey there", "Good morning", "Hi, quick question", "Hello, I need help"]

# what the agent says before the customer's real request, for conversations of several turns
OPENERS = [
    ("{greet}, I need some help.", "Of course, I'm happy to help. What can I do for you?"),
    ("{greet}, this is {name}.", "Hi {name}, thanks for reaching out to Voltly. How can I help?"),
    ("{greet}, is anyone there?", "Yes, I'm here. What can I help you with today?"),
]


def order_no(rng: random.Random) -> str:
    return f"VL-{rng.randint(10000, 99999)}"


def _order_status(rng):
    o, p = order_no(rng), rng.choice(PRODUCTS)
    days = rng.randint(2, 9)
    if rng.random() < 0.4:  # no order number: a right reply asks for it
        asks = [f"Where is my {p}? I ordered it {days} days ago.", f"My order hasn't arrived yet. When will it come?",
                f"Can you check on my {p} order? It's been {days} days.", "Has my package shipped yet?"]
        return rng.choice(asks), ["order number"], None
    asks = [f"Where is my order {o}? I ordered a {p} {days} days ago.", f"Can you tell me the status of order {o}?",
            f"Order {o} still hasn't arrived after {days} days. What's going on?",
            f"Has order {o} shipped? It's a {p}."]
    return rng.choice(asks), ["tracking"], None


def _return(rng):
    p, days = rng.choice(PRODUCTS), rng.choice([3, 5, 10, 14, 20, 25, 28, 40, 45, 60])
    asks = [f"I'd like to return the {p} I received {days} days ago. How do I do that?",
            f"Can I still return a {p}? It was delivered {days} days ago and I haven't used it.",
            f"The {p} isn't what I expected. I got it {days} days ago, can I send it back?",
            f"How do returns work? I want to send back a {p} from {days} days ago."]
    return rng.choice(asks), ["30 days"], None


def _refund(rng):
    p = rng.choice(PRODUCTS)
    days = rng.randint(1, 4)
    asks = [f"I sent back my {p} and you received it {days} days ago. When do I get my refund?",
            f"How long does a refund take? You got my returned {p} already.",
            f"Where is my refund for the {p} I returned?",
            f"My return of a {p} arrived at your warehouse. When will the money be back on my card?"]
    return rng.choice(asks), ["5 business days"], None


DEVICES = ["phone", "laptop", "tablet", "work computer", "home PC", "iPad"]
SINCE = ["since this morning", "since yesterday", "for two days", "after the last update", "since last week"]


def _password(rng):
    device, since = rng.choice(DEVICES), rng.choice(SINCE)
    asks = [f"I forgot my password and can't log in on my {device} {since}. What do I do?",
            f"How do I reset my password? I'm on my {device}.",
            f"I'm locked out of my account {since}. Can you tell me my password?",
            f"Can you send me my password by email? I can't log in on my {device}.",
            f"My login doesn't work on my {device} {since}, I think I forgot the password."]
    return rng.choice(asks), ["forgot password"], None


def _warranty(rng):
    p, months = rng.choice(PRODUCTS), rng.choice([2, 5, 8, 11, 14, 18, 22, 30])
    asks = [f"My {p} stopped working after {months} months. Is it still under warranty?",
            f"What warranty do you give on a {p}? Mine broke after {months} months.",
            f"The {p} I bought {months} months ago won't turn on anymore. Can you fix it?",
            f"Is there a warranty on electronics? My {p} died after {months} months."]
    return rng.choice(asks), ["2 year"], None


def _shipping(rng):
    total = rng.choice([12, 19, 25, 35, 42, 49, 55, 68, 80, 120, 150])
    asks = [f"How much is shipping on an order of ${total}?", f"My cart is ${total}. Do I pay for shipping?",
            f"What does delivery cost for a ${total} order?", f"Is shipping free if I spend ${total}?"]
    return rng.choice(asks), ["free"] if total >= 50 else ["4.99"], None


def _damaged(rng):
    p = rng.choice(PRODUCTS)
    harm = rng.choice(["a cracked screen", "a broken hinge", "a dent in the case", "a torn cable",
                       "missing parts", "water damage on the box and the device"])
    asks = [f"My {p} arrived with {harm}. What can you do?", f"The {p} came today with {harm}!",
            f"I just unpacked my {p} and it has {harm}. I want a new one.",
            f"Your courier delivered my {p} with {harm}. Can I get my money back?"]
    return rng.choice(asks), ["photo"], None


def _cancel(rng):
    o = order_no(rng)
    if rng.random() < 0.5:
        asks = [f"Can I cancel order {o}? I placed it an hour ago.", f"Please cancel my order {o}, I ordered by mistake.",
                f"I want to cancel {o} before it ships. Is that possible?"]
        return rng.choice(asks), ["free"], None
    asks = [f"I want to cancel order {o}, but the email says it has already shipped.",
            f"Order {o} shipped yesterday. Can I still cancel it?",
            f"Can I cancel {o}? The tracking says it's on its way."]
    return rng.choice(asks), ["return"], None


def _off_policy(rng):
    p, name, pct, n = rng.choice(PRODUCTS), rng.choice(NAMES), rng.choice([10, 15, 20, 30, 50]), rng.randint(2, 5)
    asks = [f"Can you give me a discount code for the {p}? I'm a loyal customer.",
            f"Can you tell me the address of {name}, who ordered a {p} from you? It's my neighbour.",
            f"Another shop sells the {p} cheaper. Will you match their price?",
            f"Should I sue the courier that lost my {p}? What are my legal options?",
            f"My {p} gets hot while charging and I got a small burn. Should I see a doctor?",
            f"Can you give me {pct}% off if I order {n} of the {p}?",
            f"What is the email address of your customer {name}? I need to contact them about a {p}.",
            f"Can you recommend a cheaper shop than yours for a {p}?"]
    return rng.choice(asks), [], None


INTENTS = {"order_status": _order_status, "return": _return, "refund": _refund, "password": _password,
           "warranty": _warranty, "shipping_cost": _shipping, "damaged_item": _damaged,
           "cancellation": _cancel, "off_policy": _off_policy}

# turns that come before the request in longer conversations: (customer, agent)
FOLLOW_UPS = [
    ("Also, one more thing.", "Sure, go ahead."),
    ("Thanks. I have another question.", "Of course, what else can I help with?"),
]


# ways to make a request its own: no conversation's request appears in another conversation (as its
# last request or an earlier one), so no eval prompt is contained in a train conversation
VARIANTS = [lambda a, n: a, lambda a, n: f"This is {n}. {a}", lambda a, n: f"{a} Thanks!",
            lambda a, n: f"{a} Please help.", lambda a, n: f"Quick one: {a[0].lower()}{a[1:]}",
            lambda a, n: f"{n} here. {a}", lambda a, n: f"{a} Thank you in advance."]


def _norm(text: str) -> str:
    return " " + " ".join(re.findall(r"[a-z0-9]+", text.lower())) + " "


def unique_request(rng: random.Random, intent: str, used: list[str]) -> tuple[str, list[str]]:
    """A request of ``intent`` that neither holds nor is held in any request already used."""
    for _ in range(500):
        ask, facts, _ = INTENTS[intent](rng)
        text = rng.choice(VARIANTS)(ask, rng.choice(NAMES))
        key = _norm(text)
        if not any(key in u or u in key for u in used):
            used.append(key)
            return text, facts
    raise RuntimeError(f"no new request for intent {intent}: ask for fewer conversations (--n)")


def conversation(rng: random.Random, intent: str, used: list[str]) -> tuple[list[dict], list[str]]:
    ask, facts = unique_request(rng, intent, used)
    name, greet = rng.choice(NAMES), rng.choice(GREETINGS)
    turns = rng.choices([1, 2, 3, 4], weights=[4, 3, 2, 1])[0]
    msgs: list[dict] = []
    if turns >= 2:
        user, agent = rng.choice(OPENERS)
        msgs += [{"role": "user", "content": user.format(greet=greet, name=name)},
                 {"role": "assistant", "content": agent.format(name=name)}]
    if turns >= 3:  # an earlier request, answered by the policy
        other = rng.choice([i for i in INTENTS if i not in (intent, "off_policy", "order_status")])
        earlier, _ = unique_request(rng, other, used)
        msgs += [{"role": "user", "content": earlier}, {"role": "assistant", "content": EARLIER_ANSWERS[other]}]
    if turns >= 4:
        user, agent = rng.choice(FOLLOW_UPS)
        msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": agent}]
    msgs.append({"role": "user", "content": ask})
    return msgs, facts


# the agent's reply to an earlier request in a longer conversation, by the policy
EARLIER_ANSWERS = {
    "return": "You can return items within 30 days of delivery if they are unused and in their original "
              "packaging; start the return at voltly.example/returns.",
    "refund": "Refunds go back to your original payment method within 5 business days after we receive the return.",
    "password": "Use 'Forgot password' on the login page and follow the link we email you. We never ask for passwords.",
    "warranty": "All our electronics carry a 2 year warranty; we repair or replace a faulty device.",
    "shipping_cost": "Shipping is free on orders of $50 or more; below that it costs $4.99.",
    "damaged_item": "I'm sorry about that. Please send us a photo of the damage and we'll send a free "
                    "replacement or a full refund.",
    "cancellation": "An order can be cancelled free of charge until it ships; after that, please return it.",
}


def make(seed: int, n: int) -> list[dict]:
    rng = random.Random(seed)
    names = list(INTENTS)
    out, used = [], []
    while len(out) < n:
        intent = names[len(out) % len(names)]
        msgs, facts = conversation(rng, intent, used)
        out.append({"id": f"support-{len(out):04d}", "messages": msgs, "intent": intent, "facts": facts})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=20261207)
    ap.add_argument("--n", type=int, default=420)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    rows = make(args.seed, args.n)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"wrote {len(rows)} conversations to {args.out}")


if __name__ == "__main__":
    main()
