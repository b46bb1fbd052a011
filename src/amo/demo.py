"""The embedded default data set: a demo copilot for e-commerce and code compliance.

Deterministic for a seed (byte-identical files), written by project code so that a fresh clone
can rebuild exactly the data that `data.dvc` records. Wording is varied through many templates
and fillers, and out-of-scope prompts reuse in-scope vocabulary, so bag-of-words is not enough.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from amo.data import write_jsonl

AGENTS = [
    ("product_search", "shopping", "Searches the product catalogue from a free-text need. It takes the shopper's wording (category, brand, colour, size, budget) and returns matching products with their ids, titles and availability, so later steps can price or compare them."),
    ("price_lookup", "shopping", "Looks up the current price of a given product, including active discounts, coupons and price history for the last ninety days. Needs a product name or id and returns the price in the shopper's currency."),
    ("product_comparison", "shopping", "Compares two or more products side by side on specifications, ratings and value for money, and explains which one suits the shopper's stated needs better. Needs the products to compare."),
    ("order_status", "shopping", "Tracks an existing order: where it is, whether it has been dispatched, and its expected delivery date. Needs an order number or the account's recent orders and returns the latest tracking events."),
    ("returns_refunds", "shopping", "Handles returns, exchanges and refunds for delivered items: checks eligibility against the return window, creates a return label and reports the refund status back to the shopper."),
    ("shipping_delivery", "shopping", "Answers questions about delivery options before purchase: shipping costs, delivery speed to a postcode, international shipping and pickup points. Returns the options with prices and dates."),
    ("payment_billing", "shopping", "Resolves payment and billing questions: failed card payments, double charges, invoices, instalment plans and accepted payment methods. Needs the order or the invoice in question."),
    ("reviews_summary", "shopping", "Reads customer reviews of a product and summarises what buyers praise and complain about, with the average rating and common issues such as sizing or battery life."),
    ("account_management", "shopping", "Manages the shopper's account: password resets, email or address changes, loyalty points balance and newsletter preferences."),
    ("license_check", "compliance", "Checks open-source licences of a code base or package and flags obligations and conflicts, for example GPL code linked into proprietary software or missing attribution for Apache-2.0 components."),
    ("code_compliance_scan", "compliance", "Runs a static scan of a repository against the company's coding policy: hard-coded secrets and API keys, banned functions, missing headers and insecure configuration. Returns findings with file and line."),
    ("dependency_audit", "compliance", "Audits a project's third-party dependencies for known vulnerabilities and outdated versions using the lock file, and proposes safe upgrade versions for each affected package."),
    ("compliance_report", "compliance", "Writes a compliance report for auditors from the results of scans and licence checks: a summary, the open findings by severity and the remediation plan, as a shareable document."),
    ("human_support_handoff", "support", "Hands the conversation to a human support agent when the user asks for a person, is upset, or the request needs judgement the assistants cannot give. Passes a summary of the conversation along."),
]

PRODUCTS = ["running shoes", "wireless headphones", "4K monitor", "gaming laptop", "coffee maker", "winter jacket",
            "office chair", "smartwatch", "backpack", "electric toothbrush", "yoga mat", "air fryer", "desk lamp",
            "mechanical keyboard", "phone case", "robot vacuum"]
BRANDS = ["Nike", "Sony", "Dell", "Adidas", "Philips", "Samsung", "Lenovo", "Bose", "Garmin", "Logitech", "Apple", "Asus"]
COLORS = ["red", "black", "white", "blue", "green", "grey"]
SIZES = ["small", "medium", "large", "10", "42", "XL"]
REPOS = ["payments-api", "checkout-web", "billing-service", "mobile-app", "data-pipeline", "auth-gateway", "search-indexer"]
LICENCES = ["MIT", "GPL-3.0", "Apache-2.0", "AGPL-3.0", "BSD-3-Clause", "LGPL-2.1"]

# Several phrasings per agent; many avoid the agent's obvious keywords.
TEMPLATES: dict[str, list[str]] = {
    "product_search": ["find me {color} {product} from {brand}", "do you sell {product}?", "I'm looking for a {product} for my dad",
                       "show me {brand} {product} in size {size}", "any {color} {product} in stock", "what {product} options do you carry",
                       "need a new {product}, something decent", "got anything like a {brand} {product}?", "search {product} {color}",
                       "which {product} do you have available right now", "help me pick out a {product}"],
    "price_lookup": ["how much is the {brand} {product}", "what does the {product} cost", "is the {brand} {product} on sale",
                     "price of {brand} {product}?", "has the {product} gotten cheaper lately", "any coupon for the {brand} {product}",
                     "what would I pay for a {color} {product}", "is there a discount on {product} today", "cost of the {product} in euros",
                     "did the {brand} {product} drop below its usual amount"],
    "product_comparison": ["compare the {brand} and {brand2} {product}", "{brand} or {brand2} {product}, which is better",
                           "what's the difference between the {brand} {product} and the {brand2} one", "should I get {brand} or {brand2}",
                           "side by side: {brand} vs {brand2} {product}", "which {product} is better value, {brand} or {brand2}",
                           "help me decide between two {product}s", "is the {brand} {product} worth it over {brand2}"],
    "order_status": ["where is my order {order}", "has order {order} shipped yet", "when will my package arrive",
                     "track order {order}", "my {product} hasn't shown up, order {order}", "is my parcel still coming",
                     "status of purchase {order}?", "it's been a week and nothing arrived", "did you dispatch {order} already"],
    "returns_refunds": ["I want to return the {product}", "how do I send back order {order}", "the {product} is broken, I need my money back",
                        "can I exchange the {product} for a different size", "refund status for {order}", "the {color} {product} doesn't fit",
                        "is it too late to give back the {product}", "print me a label to ship the {product} back", "where's my refund"],
    "shipping_delivery": ["how much is delivery to {postcode}", "do you ship to Canada", "how fast can I get a {product} to {postcode}",
                          "is there next-day delivery", "can I pick it up at a store instead", "what are the postage options",
                          "how long does standard shipping take", "do you deliver on weekends"],
    "payment_billing": ["my card was declined", "I was charged twice for {order}", "can I pay in instalments", "send me the invoice for {order}",
                        "do you accept PayPal", "why is there an extra charge on my statement", "payment failed but money left my account",
                        "can I split the payment across two cards"],
    "reviews_summary": ["what do people say about the {brand} {product}", "are the reviews of the {product} good",
                        "any complaints about the {brand} {product}", "summarise buyer feedback on the {product}",
                        "do customers like the {color} {product}", "is the {brand} {product} well rated", "what's the rating of the {product}"],
    "account_management": ["I forgot my password", "change the email on my account", "how many loyalty points do I have",
                           "update my delivery address", "unsubscribe me from the newsletter", "I can't log in",
                           "delete my saved address", "reset my login"],
    "license_check": ["can we use a {licence} library in our closed-source product", "check the licences in {repo}",
                      "is {licence} compatible with {licence2}", "what are my obligations under {licence}",
                      "does {repo} have any copyleft code", "do we need attribution for {licence} components",
                      "audit the open-source terms of {repo}", "is it legal to ship {repo} with that {licence} package"],
    "code_compliance_scan": ["scan {repo} for hard-coded secrets", "check {repo} against our coding policy",
                             "did anyone commit API keys to {repo}", "run the policy scanner on {repo}", "look for banned functions in {repo}",
                             "are there passwords in the {repo} config", "static analysis of {repo} please", "find insecure settings in {repo}"],
    "dependency_audit": ["are any packages in {repo} vulnerable", "audit the dependencies of {repo}", "check {repo}'s lock file for CVEs",
                         "which libraries in {repo} are outdated", "is our version of log4j in {repo} safe", "what should we upgrade in {repo}",
                         "list vulnerable third-party code in {repo}"],
    "compliance_report": ["write a compliance report for {repo}", "prepare the audit document for {repo}",
                          "summarise the open findings of {repo} for the auditors", "I need a remediation plan write-up for {repo}",
                          "produce the quarterly compliance summary", "draft the report for the security review of {repo}"],
    "human_support_handoff": ["let me talk to a real person", "I want a human", "this bot is useless, get me an agent",
                              "connect me with customer service", "can someone from your team call me", "I'm really angry, escalate this",
                              "speak to a manager now", "transfer me to support staff"],
}

# Out of scope, many reusing in-scope words.
OUT_OF_SCOPE = ["what's the weather tomorrow", "tell me a joke", "what's the price of gold per ounce", "how do I return a serve in tennis",
                "write a poem about shipping containers", "what licence do I need to drive a truck", "who won the football match",
                "recipe for banana bread", "how tall is Mount Everest", "translate good morning into French", "what's the capital of Peru",
                "how do I compare fractions", "explain the order of operations in maths", "track the ISS in the sky tonight",
                "scan this document to PDF on my printer", "is it going to rain in Paris", "how to refund a friend who paid for dinner",
                "best way to learn guitar", "what time is it in Tokyo", "how many calories in an apple", "who wrote Hamlet",
                "what does the fox say", "how do vaccines work", "recommend a movie for tonight", "how do I tie a tie",
                "what is the speed of light", "why is the sky blue", "how do I apply for a fishing licence",
                "what's a good name for a cat", "how long should I boil an egg", "what's the stock price of Tesla",
                "how to fix a leaking tap", "plan a trip to Rome", "what is a black hole", "sing me a song"]
OOS_PREFIXES = ["", "hey, ", "quick question: ", "um ", "please ", "so ", "can you tell me "]

PAIRS = [("product_comparison", "price_lookup", "{prefix}compare the {brand} and {brand2} {product} and tell me which is cheaper"),
         ("product_search", "price_lookup", "{prefix}find a {color} {product} and check what it costs"),
         ("product_search", "reviews_summary", "{prefix}look for a {product} with good reviews"),
         ("order_status", "returns_refunds", "{prefix}order {order} arrived damaged, where is it and can I send it back"),
         ("returns_refunds", "payment_billing", "{prefix}I returned the {product} but was still charged for {order}"),
         ("code_compliance_scan", "compliance_report", "{prefix}scan {repo} for secrets and write up the findings"),
         ("dependency_audit", "license_check", "{prefix}audit {repo}'s dependencies for CVEs and licence problems"),
         ("license_check", "compliance_report", "{prefix}check the licences in {repo} and give me the auditor report"),
         ("order_status", "human_support_handoff", "{prefix}order {order} is lost and I want to speak to a person"),
         ("shipping_delivery", "price_lookup", "{prefix}what's the total for the {product} with delivery to {postcode}")]
PREFIXES = ["", "please ", "hi, ", "could you ", "I need you to "]

# Trace flows: ordered paths and phrasings; order cues change the path.
FLOWS = [
    (["product_search"], ["find me {color} {product} from {brand}", "any {product} in size {size}?"]),
    (["product_search", "price_lookup"], ["find a {color} {product} and then tell me its price", "look for {brand} {product}, then check the cost"]),
    (["price_lookup", "product_comparison"], ["check prices of the {brand} and {brand2} {product} first, then compare them"]),
    (["product_comparison", "price_lookup"], ["compare the {brand} and {brand2} {product}, then get the price of the winner"]),
    (["product_search", "price_lookup", "product_comparison"], ["find {product}s under {budget} dollars, price them and compare the top two"]),
    (["product_search", "reviews_summary", "product_comparison"], ["search {product}s, read what reviewers say, then compare the best ones"]),
    (["order_status"], ["where is order {order}?", "has {order} shipped"]),
    (["order_status", "returns_refunds"], ["check on order {order} and then start a return for it"]),
    (["returns_refunds", "payment_billing"], ["return the {product} from {order} and then check the refund on my card"]),
    (["code_compliance_scan"], ["scan {repo} for leaked keys"]),
    (["code_compliance_scan", "compliance_report"], ["scan {repo} for policy violations, then write the report"]),
    (["dependency_audit", "license_check"], ["audit the packages in {repo} and after that check their licences"]),
    (["license_check", "dependency_audit"], ["first check licences in {repo}, then audit the dependencies for CVEs"]),
    (["code_compliance_scan", "dependency_audit", "license_check", "compliance_report"],
     ["scan {repo} for leaked keys, audit its dependencies, check the licences, then give me a report"]),
    (["order_status", "human_support_handoff"], ["order {order} never came and I'm furious, get me a human"]),
    (["human_support_handoff"], ["just connect me to a person"]),
]


def _fill(rng: random.Random, template: str) -> str:
    brand, brand2 = rng.sample(BRANDS, 2)
    licence, licence2 = rng.sample(LICENCES, 2)
    return template.format(product=rng.choice(PRODUCTS), brand=brand, brand2=brand2, color=rng.choice(COLORS),
                           size=rng.choice(SIZES), repo=rng.choice(REPOS), licence=licence, licence2=licence2,
                           order=f"#{rng.randint(10000, 99999)}", postcode=f"{rng.randint(10000, 99999)}",
                           budget=rng.choice([50, 100, 150, 300]), prefix=rng.choice(PREFIXES))


def _vary(rng: random.Random, text: str) -> str:
    roll = rng.random()
    if roll < 0.15:
        return text.capitalize() + rng.choice(["?", ".", "!", ""])
    if roll < 0.25:
        return text.upper() if len(text) < 40 else text
    if roll < 0.35:
        return rng.choice(["hey ", "hello, ", "ok so ", "yo "]) + text
    return text


def _unique(rng: random.Random, make, count: int, seen: set[str]) -> list:
    out, tries = [], 0
    while len(out) < count and tries < count * 50:
        tries += 1
        item = make()
        key = item[0].strip().lower()
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out


def _routing(rng: random.Random) -> list[dict]:
    seen: set[str] = set()
    records = []
    for agent, templates in TEMPLATES.items():
        for prompt, in _unique(rng, lambda: (_vary(rng, _fill(rng, rng.choice(templates))),), 48, seen):
            records.append({"prompt": prompt, "labels": {agent: 2}})
    for prompt, first, second in _unique(rng, lambda: (lambda p: (_vary(rng, _fill(rng, p[2])), p[0], p[1]))(rng.choice(PAIRS)), 190, seen):
        records.append({"prompt": prompt, "labels": {first: 2, second: 1}})
    for prompt, in _unique(rng, lambda: (rng.choice(OOS_PREFIXES) + _vary(rng, rng.choice(OUT_OF_SCOPE)),), 150, seen):
        records.append({"prompt": prompt, "labels": {}})
    rng.shuffle(records)
    return records


def _traces(rng: random.Random, seen: set[str]) -> list[dict]:
    def make():
        path, phrasings = rng.choice(FLOWS)
        return (_vary(rng, _fill(rng, rng.choice(phrasings))), path)

    records = [{"prompt": p, "path": path, "links": [list(l) for l in zip(path, path[1:])],
                "outcome": "handoff" if path[-1] == "human_support_handoff" else "success"}
               for p, path in _unique(rng, make, 440, seen)]
    records += [{"prompt": p, "path": [], "links": [], "outcome": "abstained"}
                for p, in _unique(rng, lambda: (rng.choice(OOS_PREFIXES) + rng.choice(OUT_OF_SCOPE) + rng.choice(["", "?", " please"]),), 60, seen)]
    rng.shuffle(records)
    return records


def _extraction(rng: random.Random) -> tuple[str, str]:
    fields: dict[str, object] = {"product": rng.choice(PRODUCTS)}
    parts = [fields["product"]]
    if rng.random() < 0.7:
        fields["brand"] = rng.choice(BRANDS)
        parts.insert(0, fields["brand"])
    if rng.random() < 0.5:
        fields["color"] = rng.choice(COLORS)
        parts.insert(0, fields["color"])
    text = " ".join(str(p) for p in parts)
    if rng.random() < 0.4:
        fields["size"] = rng.choice(SIZES)
        text += f" in size {fields['size']}"
    if rng.random() < 0.5:
        fields["max_price"] = rng.choice([30, 50, 80, 120, 200, 500])
        text += rng.choice([" under {} dollars", " for less than ${}", " max {} bucks"]).format(fields["max_price"])
    if rng.random() < 0.3:
        fields["quantity"] = rng.randint(2, 5)
        text = f"{fields['quantity']} " + text
    opener = rng.choice(["I want ", "looking for ", "find me ", "do you have ", "need ", "show me "])
    return opener + text, json.dumps(fields, sort_keys=True)


def _rewrite(rng: random.Random) -> tuple[str, str]:
    brand, product = rng.choice(BRANDS), rng.choice(PRODUCTS)
    item = f"the {brand} {product}"
    turn = rng.choice([f"Do you have {item}?", f"I'm interested in {item}.", f"Tell me about {item}."])
    reply = rng.choice(["Yes, it is in stock.", "We have it in three colours.", "It is one of our best sellers."])
    question, rewrite = rng.choice([("How much is it?", f"How much is {item}?"),
                                    ("Does it come in black?", f"Does {item} come in black?"),
                                    ("What do reviewers say about it?", f"What do reviewers say about {item}?"),
                                    ("Can you ship it to Canada?", f"Can you ship {item} to Canada?"),
                                    ("Is it on sale?", f"Is {item} on sale?"),
                                    ("How long is the warranty?", f"How long is the warranty on {item}?"),
                                    ("Can I return it if it doesn't fit?", f"Can I return {item} if it doesn't fit?")])
    return f"History: {turn} | {reply}\nQuestion: {question}", rewrite


def _split(records: list, fractions: list[float]) -> list[list]:
    cuts, start, out = [round(f * len(records)) for f in fractions], 0, []
    for size in cuts[:-1]:
        out.append(records[start:start + size])
        start += size
    return out + [records[start:]]


def write_demo_data(out_dir: Path, seed: int = 13) -> dict[str, int]:
    """Write the demo copilot's agents, routing splits, traces and two arm tasks into out_dir."""
    rng = random.Random(seed)
    out_dir = Path(out_dir)
    counts: dict[str, int] = {}
    agents = [{"id": i, "domain": d, "description": text, "tags": [d]} for i, d, text in AGENTS]
    write_jsonl(out_dir / "agents.jsonl", agents)
    counts["agents"] = len(agents)
    routing = _routing(rng)
    for name, part in zip(["train", "val", "test"], _split(routing, [0.7, 0.15, 0.15])):
        write_jsonl(out_dir / "routing" / f"{name}.jsonl", part)
        counts[f"routing_{name}"] = len(part)
    traces = _traces(rng, {r["prompt"].strip().lower() for r in routing})
    for name, part in zip(["train", "test"], _split(traces, [0.8, 0.2])):
        write_jsonl(out_dir / "traces" / f"{name}.jsonl", part)
        counts[f"traces_{name}"] = len(part)
    for task, make in (("product_extraction", _extraction), ("query_rewrite", _rewrite)):
        examples = _unique(rng, lambda: make(rng), 300, set())
        for name, part in zip(["train", "test"], _split(examples, [250 / 300, 50 / 300])):
            write_jsonl(out_dir / "tasks" / task / f"{name}.jsonl", [{"input": i, "output": o} for i, o in part])
            counts[f"task_{task}_{name}"] = len(part)
    return counts
