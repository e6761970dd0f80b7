"""Regenerate the quickstart dataset in trainer/kubetune_trainer/data/quickstart/.

The task: triage support tickets for "Nimbus", a made-up product family, into
one line of JSON with a fixed schema:

    {"product": "nimbus-drive", "category": "login", "urgency": "high"}

A small instruct model answers such tickets with friendly prose, so its loss
on the JSON answers is high before fine-tuning; the schema, the product slugs
and the urgency rule (words like "urgent" or a whole team blocked -> high,
feature requests -> low, else medium) are learnable in a few dozen LoRA steps.
Train and eval rows come from different random draws; the committed files are
the output of this script with its default seeds (deterministic).

    python scripts/make_quickstart_data.py
"""
from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "trainer" / "kubetune_trainer" / "data" / "quickstart"
SYSTEM = "You are the Nimbus support triage assistant."

PRODUCTS = {
    "nimbus-drive": ["Nimbus Drive", "the Nimbus Drive app", "my Nimbus Drive folder", "Nimbus Drive sync"],
    "nimbus-mail": ["Nimbus Mail", "my Nimbus Mail inbox", "the Nimbus Mail app", "Nimbus Mail on the web"],
    "nimbus-pay": ["Nimbus Pay", "my Nimbus Pay wallet", "the Nimbus Pay card", "Nimbus Pay checkout"],
    "nimbus-phone": ["the Nimbus Phone", "my Nimbus Phone X2", "my new Nimbus Phone", "the Nimbus Phone I ordered"],
}

TEMPLATES = {
    "login": [
        "I can't log in to {p} since {when}. It keeps saying my password is wrong.",
        "{P} asks me for a verification code but the code never arrives.",
        "My account on {p} got locked after I reset my password {when}.",
        "Signing in to {p} just spins forever on {device}.",
    ],
    "billing": [
        "I was charged {amount} twice for {p} this month.",
        "Why did my bill for {p} go up to {amount}? I did not change my plan.",
        "Please refund the {amount} charge for {p}, I cancelled {when}.",
        "The invoice for {p} shows the wrong company name.",
    ],
    "bug": [
        "{P} crashes every time I open it on {device}.",
        "Since the update {when}, {p} shows a blank screen on {device}.",
        "Files I add to {p} disappear after a few minutes.",
        "{P} freezes when I try to attach something on {device}.",
    ],
    "shipping": [
        "{P} was supposed to arrive {when} but the tracking has not moved.",
        "The box for {p} arrived damaged and the charger is missing.",
        "I got the wrong colour of {p}. I ordered black.",
        "Where is {p}? It says delivered {when} but nothing is here.",
    ],
    "feature_request": [
        "It would be nice if {p} had a dark mode.",
        "Could you add a way to export everything from {p} as a spreadsheet?",
        "Please let {p} work offline, that would help when I travel.",
        "Any plans to support shared family accounts in {p}?",
    ],
}
# Shipping only makes sense for the phone; the others are software.
CATEGORY_PRODUCTS = {c: list(PRODUCTS) for c in TEMPLATES}
CATEGORY_PRODUCTS["shipping"] = ["nimbus-phone"]

URGENT = [
    " This is urgent!",
    " Our whole team is blocked.",
    " I need this fixed ASAP, we are losing customers.",
    " Please hurry, I have a deadline today.",
]
CALM = ["", " Thanks.", " No rush.", " Thank you for your help!", " Let me know."]
WHEN = ["yesterday", "this morning", "last week", "on Monday", "two days ago"]
DEVICE = ["my laptop", "Android", "my iPhone", "Windows", "the tablet"]
AMOUNTS = ["$9.99", "$14.50", "$120", "EUR 30", "$4.99"]


def ticket(rng: random.Random) -> dict:
    category = rng.choice(sorted(TEMPLATES))
    product = rng.choice(CATEGORY_PRODUCTS[category])
    name = rng.choice(PRODUCTS[product])
    text = rng.choice(TEMPLATES[category]).format(
        p=name, P=name[0].upper() + name[1:], when=rng.choice(WHEN), device=rng.choice(DEVICE), amount=rng.choice(AMOUNTS)
    )
    if category == "feature_request":
        urgency = "low"
        text += rng.choice(CALM)
    elif rng.random() < 0.4:
        urgency = "high"
        text += rng.choice(URGENT)
    else:
        urgency = "medium"
        text += rng.choice(CALM)
    answer = json.dumps({"product": product, "category": category, "urgency": urgency})
    return {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": text},
            {"role": "assistant", "content": answer},
        ]
    }


def write(path: Path, n: int, seed: int) -> None:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            f.write(json.dumps(ticket(rng)) + "\n")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    write(OUT / "train.jsonl", 256, seed=1)
    write(OUT / "eval.jsonl", 32, seed=2)
    print(f"wrote {OUT}/train.jsonl (256 rows) and eval.jsonl (32 rows)")


if __name__ == "__main__":
    main()
