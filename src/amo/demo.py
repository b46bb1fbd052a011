"""The embedded default data set: a demo copilot for e-commerce and code compliance.

Deterministic for a seed (byte-identical files), written by project code so that a fresh clone
can rebuild exactly the data that `data.dvc` records. Each agent is asked for in many wordings,
most of them indirect or borrowing other agents' vocabulary; some prompts mention another agent's
topic only to rule it out, and out-of-scope prompts reuse in-scope words, so a bag-of-words model
cannot route it (see benchmarks/demo_separability.py).
"""

from __future__ import annotations

import json
import random
from itertools import pairwise
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

# Routing prompts: per agent (a share of them with a distractor), multi-agent, out of scope.
PER_AGENT, DISTRACTED, MULTI_AGENT, OUT_OF_SCOPE_PROMPTS = 80, 0.06, 200, 100
FRESH_SHARE = 0.2  # val/test prompts worded in a way training never saw

PRODUCTS = ["running shoes", "wireless headphones", "4K monitor", "gaming laptop", "coffee maker", "winter jacket",
            "office chair", "smartwatch", "backpack", "electric toothbrush", "yoga mat", "air fryer", "desk lamp",
            "mechanical keyboard", "phone case", "robot vacuum"]
BRANDS = ["Nike", "Sony", "Dell", "Adidas", "Philips", "Samsung", "Lenovo", "Bose", "Garmin", "Logitech", "Apple", "Asus"]
COLORS = ["red", "black", "white", "blue", "green", "grey"]
SIZES = ["small", "medium", "large", "10", "42", "XL"]
REPOS = ["payments-api", "checkout-web", "billing-service", "mobile-app", "data-pipeline", "auth-gateway", "search-indexer"]
LICENCES = ["MIT", "GPL-3.0", "Apache-2.0", "AGPL-3.0", "BSD-3-Clause", "LGPL-2.1"]
LIBS = ["log4j", "lodash", "openssl", "requests", "jackson-databind", "express", "pillow", "ffmpeg"]
COUNTRIES = ["Canada", "Ireland", "Japan", "Brazil", "Norway", "Australia"]
WHEN = ["last week", "on Monday", "ten days ago", "a fortnight ago", "before the holidays", "yesterday"]
MONEY = ["$49", "$120", "89 euros", "$15", "230 dollars"]
# Out-of-scope fillers.
ASSETS = ["bitcoin", "gold", "a barrel of oil", "ethereum", "Tesla shares", "silver", "the euro against the dollar"]
LANGS = ["python", "java", "rust", "C++", "typescript", "go"]
CODE_THINGS = ["function", "generator", "constructor", "lambda", "method", "async call"]
CITIES = ["Paris", "Lima", "Oslo", "Tokyo", "Nairobi", "Toronto", "Madrid"]

# What a shopper or developer asks each agent for, in many wordings. Most avoid the agent's own
# keywords, refer to things indirectly, or borrow vocabulary (order, price, return, licence,
# review, scan) that also belongs to other agents, so single words do not give the agent away.
ASKS: dict[str, list[str]] = {
    "product_search": [
        "find me {color} {product} from {brand}", "do you carry anything like a {product}",
        "I'm after a {product} for my dad, nothing too fancy", "what have you got for someone who runs every morning",
        "my old {product} died and I need another one", "something to keep my coffee hot on the commute",
        "is there a {brand} {product} in {color}", "show me what exists in size {size}",
        "gift ideas for a teenager who plays games all night", "anything that would fit on a tiny desk",
        "I need a {product}, where do I even start", "list {color} {product}s under {budget} dollars",
        "got any {product} I could order today", "browse the {brand} range for me",
        "what's available if I want to start exercising at home", "help me find something for back pain while working",
        "what do you have for freezing mornings", "point me to where the {product}s are",
        "hunting for a {product} in {color}, size {size}", "are there any {product}s left",
        "what's new this month for people who like {brand}", "pull up a few {product}s I could buy",
        "I keep breaking phones, what could protect mine", "my kid wants a {product} for school, options?",
        "anything cordless for cleaning floors", "what could I get my wife who loves coffee",
        "need gear for a hiking trip", "which {product}s could work for a small flat",
    ],
    "price_lookup": [
        "how much is the {brand} {product}", "what's the damage for a {product}",
        "what would the {brand} {product} set me back", "is the {product} any cheaper than last month",
        "any coupon codes for the {brand} {product}", "what are you charging for the {color} {product}",
        "has the {product} been reduced", "what's the going rate for the {brand} {product} right now",
        "is the {brand} {product} on offer this week", "how many euros is the {product}",
        "did the {product} go up since I last looked", "the lowest the {brand} {product} has been in three months?",
        "what do I pay for the {product} with a student discount", "ballpark figure for the {product}",
        "is {money} a fair amount for the {brand} {product} or will it drop", "the {product} I saw yesterday, what's it going for now",
        "check if there's a promo on the {product}", "how pricey is the {brand} {product}",
        "is {money} the real figure for the {product} or is there a deal", "what does a {color} {product} go for these days",
        "can I get the {brand} {product} for less anywhere in your shop", "tell me what the {product} costs before I order it",
        "is the {product} cheaper in black", "has the {brand} one been marked down",
    ],
    "product_comparison": [
        "{brand} or {brand2} {product}, which should I get", "which is the better {product}: {brand} or {brand2}",
        "what separates the {brand} {product} from the {brand2} one", "put the {brand} and {brand2} {product}s next to each other",
        "I'm torn between two {product}s, help", "is the {brand} {product} really better than the {brand2}",
        "{brand} vs {brand2} for a {product}", "pros and cons of the {brand} {product} against the {brand2}",
        "which {product} gives more for the money, {brand} or {brand2}", "would the {brand2} suit me better than the {brand} for travel",
        "how does the {brand} {product} stack up against the {brand2}", "weigh up these two {product}s for me",
        "the {brand} one or the {brand2} one, I can't decide", "is the {brand} worth paying more for than the {brand2}",
        "spec differences between {brand} and {brand2} {product}s", "which of these two {product}s lasts longer",
        "between {brand} and {brand2}, which would you order", "the {brand2} {product} costs less, is the {brand} one still the smarter buy",
        "do the {brand} and {brand2} {product}s differ much", "which is quieter, the {brand} or the {brand2}",
    ],
    "order_status": [
        "where is my order {order}", "the thing I bought {when} never showed up",
        "still waiting on the {product} I ordered {when}", "has {order} left the warehouse",
        "any news on my parcel", "my {product} was supposed to be here {when}, what's happening",
        "is {order} on its way", "can you see where my package is right now",
        "nothing has turned up and the tracking page is blank", "when does the {product} I paid for actually get to me",
        "it says dispatched but nothing yet for {order}", "I ordered a {product} {when}, is it coming today",
        "has the courier picked up {order}", "where's my stuff", "what's the holdup with {order}",
        "the {brand} {product} I bought {when}, where is it now", "expected arrival of {order}",
        "I haven't received anything yet", "the {color} {product} I'm waiting for, any update",
        "did my purchase from {when} get lost", "is the van bringing {order} today",
    ],
    "returns_refunds": [
        "I want to send the {product} back", "the {product} doesn't fit, can I swap it",
        "how do I return something from {order}", "the {brand} {product} arrived broken and I want my money back",
        "changed my mind about the {product}, what now", "can I get a label to post the {product} back",
        "the {color} {product} looks nothing like the photos, I'd like to give it back",
        "is the {product} still within the window to hand it back", "I sent the {product} back {when}, where's my money",
        "swap the {product} for a size {size}", "exchange {order} for another colour",
        "the thing I bought {when} stopped working, can I hand it back", "the {product} I received is the wrong model, I don't want it",
        "how long do I have to bring the {product} back", "refund for {order} please",
        "I'd like to undo my purchase of the {product}", "can I get credit instead of cash for the {product}",
        "the {brand} {product} is faulty, what are my options", "the box came open and the {product} is scratched, take it back",
        "who pays postage if I return the {product}",
    ],
    "shipping_delivery": [
        "how much is delivery to {postcode}", "do you ship to {country}",
        "if I buy a {product} today, when would it reach {postcode}", "is there a next-day option",
        "can I collect from a store instead of having it sent", "what does postage cost for a {product}",
        "do you send parcels abroad", "how long does standard shipping take to {country}",
        "do couriers come on Saturdays", "is it free to send if I spend over {budget} dollars",
        "can I get the {product} by Friday if I order now", "which pickup points are near {postcode}",
        "what's the quickest way to get a {product} to {country}", "do you charge to deliver to {country}",
        "are there express options before I check out", "can the {product} go to a locker",
        "will a big {product} cost extra to send", "could it be left with a neighbour",
        "before I buy the {brand} {product}: how soon could it be here",
    ],
    "payment_billing": [
        "my card got declined", "I was charged twice for {order}",
        "can I spread the cost of the {product} over a few months", "send me the invoice for {order}",
        "do you take PayPal", "there's a charge on my statement I don't recognise",
        "the payment failed but the money left my account", "can I split it across two cards",
        "why did my bank take {money} when the {product} was cheaper", "I need a VAT receipt for {order}",
        "can I pay by bank transfer", "the total for my {brand} {product} order isn't what came off my card",
        "the checkout keeps rejecting my card", "I got billed for an order I cancelled",
        "is buy now pay later possible for the {product}", "my gift card won't go through at checkout",
        "you took {money} twice from my account", "the receipt for {order} has the wrong company name",
        "Apple Pay keeps failing when I order",
    ],
    "reviews_summary": [
        "what do people say about the {brand} {product}", "are buyers happy with the {product}",
        "any common complaints about the {brand} {product}", "sum up the feedback on the {product}",
        "do owners of the {color} {product} regret it", "how well rated is the {brand} {product}",
        "how many stars does the {product} get", "what's the verdict from people who bought the {brand} {product}",
        "do folks say the {product} runs small", "is the battery on the {brand} {product} as bad as people claim",
        "what are the main gripes with the {product}", "did anyone mention the {product} breaking after a month",
        "give me the gist of what customers think of the {brand} {product}",
        "is the {product} worth it according to people who own one", "do the {brand} {product} reviews mention noise",
        "what did other buyers of {brand}'s {product} think", "have owners had trouble with the {product}",
        "is the {brand} {product} loved or hated",
    ],
    "account_management": [
        "I forgot my password", "change the email on my account", "how many loyalty points have I got",
        "update my saved address to {postcode}", "stop sending me the newsletter", "I can't log in",
        "remove my old address from my profile", "my login isn't working since I changed phones",
        "switch my account to a new email", "how do I close my account", "what are my reward points worth",
        "turn off marketing emails", "I got locked out after too many attempts", "change the name on my profile",
        "set up two-factor sign-in for me", "I never get the reset link", "merge my two accounts",
        "make {postcode} my default address for future orders",
    ],
    "license_check": [
        "can we use {licence} code in our closed-source product", "is {licence} compatible with {licence2}",
        "what do we owe if we ship {licence} code", "does {repo} pull in any copyleft code",
        "do we need to credit the authors of the {licence} bits in {repo}",
        "are we allowed to sell {repo} if it includes a {licence} package",
        "check the open-source terms of everything in {repo}", "will linking {lib} force us to open our source",
        "is it okay to bundle {licence} code with our proprietary app", "what are the attribution rules for {licence}",
        "legal asks if {repo} is safe to distribute", "do we have to publish our changes to the {licence} component",
        "which packages in {repo} can't be used commercially", "is {lib} under a permissive licence",
        "can our customers redistribute {repo} given what it includes", "is mixing {licence} and {licence2} code in {repo} a problem",
        "what does {licence} require from us",
    ],
    "code_compliance_scan": [
        "scan {repo} for hard-coded secrets", "did anyone leave credentials in {repo}",
        "check {repo} against our coding rules", "look through {repo} for banned function calls",
        "are there passwords sitting in the {repo} config", "run the policy checker over {repo}",
        "find insecure settings in {repo}", "make sure no API tokens got committed to {repo}",
        "is {repo} missing the required file headers", "check {repo} for eval and other forbidden calls",
        "did the last merge to {repo} break any of our code rules", "static check of {repo} please",
        "are there debug flags left on in {repo}", "someone pasted an AWS key somewhere in {repo}, find it",
        "does {repo} follow the secure coding standard", "go over {repo} line by line for anything our policy bans",
        "is TLS verification switched off anywhere in {repo}",
    ],
    "dependency_audit": [
        "are any packages in {repo} vulnerable", "audit the dependencies of {repo}",
        "check {repo}'s lock file for CVEs", "which libraries in {repo} are out of date",
        "is our {lib} version in {repo} safe", "what should we upgrade in {repo}",
        "does {repo} depend on anything with a known exploit", "list third-party code in {repo} that needs patching",
        "is {repo} affected by the latest {lib} advisory", "how stale are the packages {repo} pins",
        "which upgrade of {lib} fixes the security hole", "are we running an old {lib} anywhere in {repo}",
        "security advisories touching {repo}'s requirements", "is the {lib} that {repo} pulls in still maintained",
        "bump whatever is risky in {repo}", "what in {repo}'s requirements has a patch available",
    ],
    "compliance_report": [
        "write a compliance report for {repo}", "prepare the audit document for {repo}",
        "summarise the open findings of {repo} for the auditors", "I need a remediation plan write-up for {repo}",
        "put together the quarterly compliance summary", "draft something I can hand to the security review about {repo}",
        "the auditors arrive Monday, give me a document on {repo}", "turn last week's scan results for {repo} into a report",
        "export the findings by severity as a PDF for {repo}", "make a shareable write-up of where {repo} stands on policy",
        "I need paperwork showing {repo} passed its checks", "the board wants a one-pager on our open compliance issues",
        "collect the licence and scan results for {repo} into one document", "what should the audit pack for {repo} say",
        "format the {repo} findings so the auditors can read them",
    ],
    "human_support_handoff": [
        "let me talk to a real person", "I want a human", "this bot is useless, get me someone",
        "connect me with customer service", "can someone from your team call me", "I'm really angry, escalate this",
        "speak to a manager now", "transfer me to support staff", "stop, I need somebody who can actually help",
        "is there a phone number where a person answers", "I've asked three times about {order}, put me through to someone",
        "I don't want to chat with a machine about my {product}", "get a supervisor on the line",
        "I'd rather explain this to a human being", "none of these answers help, who can I speak with",
        "I want to complain to an actual employee",
    ],
}

# Short mentions of each agent's topic, used as distractors ("not asking about X, ...").
MENTIONS: dict[str, list[str]] = {
    "product_search": ["finding something new", "other products", "browsing"],
    "price_lookup": ["the price", "discounts", "what it costs"],
    "product_comparison": ["comparing models", "which one is better"],
    "order_status": ["tracking", "where my parcel is", "the delivery status"],
    "returns_refunds": ["returns", "a refund", "sending it back"],
    "shipping_delivery": ["shipping costs", "delivery options"],
    "payment_billing": ["payment", "my card", "the invoice"],
    "reviews_summary": ["reviews", "ratings"],
    "account_management": ["my account", "my password"],
    "license_check": ["licences", "licensing"],
    "code_compliance_scan": ["the secret scan", "coding policy"],
    "dependency_audit": ["vulnerable packages", "CVEs"],
    "compliance_report": ["the audit report", "the write-up"],
    "human_support_handoff": ["talking to a person", "a human agent"],
}
DISTRACTORS = ["not asking about {mention}, {ask}", "{ask}; this isn't about {mention}", "forget {mention} for now, {ask}",
               "I already sorted out {mention}. {ask}", "{ask} (no need for {mention})", "never mind {mention}: {ask}",
               "{mention} is fine, but {ask}"]
OPENERS = ["hi, ", "quick one: ", "hello, ", "ok so ", "sorry to bother you, ", "one more thing: ", "hey there, "]
CLOSERS = [", thanks", " please", " asap", " if you can", ", cheers", " - I'm on the app", ", it's for a gift"]

# Out of scope, reusing in-scope words (price, return, order, compare, licence, scan, review, ship...).
OUT_OF_SCOPE = [
    "what's the price of {asset}", "what is the return type of a {lang} {code_thing}",
    "how do I return a value from a {lang} {code_thing}", "how do I compare two strings in {lang}",
    "explain the order of operations in maths", "order me a pizza", "track the ISS over {city} tonight",
    "scan this document to PDF on my printer", "how do I scan a QR code with my phone",
    "what licence do I need to drive a truck", "how do I get a fishing licence", "write a review of the film I saw",
    "how do you build a ship in a bottle", "audit my diet for protein", "how do tax audits work",
    "how do I deliver bad news to a colleague", "compare the population of {city} and Rome",
    "how do refunds work for airline tickets", "split the dinner bill between four people",
    "my {lang} code won't compile", "what's the weather in {city}", "tell me a joke about {product}s",
    "who invented the {product}", "write a poem about shipping containers", "translate where is my parcel into French",
    "what is dependency injection in {lang}", "is it legal to copy a famous painting", "what time is it in {city}",
    "recipe for banana bread", "how tall is Mount Everest", "how many calories in an apple", "who wrote Hamlet",
    "recommend a movie for tonight", "how do vaccines work", "what's a good name for a cat",
    "how long should I boil an egg", "how to fix a leaking tap", "plan a trip to {city}", "why is the sky blue",
    "what's the stock price of {brand}", "is {brand} a good company to work for", "history of the {brand} logo",
    "what's the exchange rate in {city}", "how do I return a serve in tennis", "track my sleep better",
    "how do I reset my router", "what does open source mean in journalism", "how do I review a pull request kindly",
    "what are the rules of chess", "sing me a song", "how do I order my bookshelf by colour",
    "price of a train ticket from {city} to Rome", "how do I cancel my gym membership", "write a cover letter for me",
    "do I need a licence to fly a drone in {city}", "how do I renew my driving licence", "is a TV licence worth it",
]

# Multi-agent prompts: (primary, secondary); the primary is asked first.
PAIRS = [("product_comparison", "price_lookup"), ("product_search", "price_lookup"), ("product_search", "reviews_summary"),
         ("order_status", "returns_refunds"), ("returns_refunds", "payment_billing"),
         ("code_compliance_scan", "compliance_report"), ("dependency_audit", "license_check"),
         ("license_check", "compliance_report"), ("order_status", "human_support_handoff"),
         ("shipping_delivery", "price_lookup"), ("reviews_summary", "product_comparison"),
         ("payment_billing", "human_support_handoff")]
PAIR_JOINS = ["{a} and also {b}", "{a}, and while you're at it {b}", "{a}; also {b}", "{a}. oh, and {b}",
              "mainly {a}, but {b} too", "{a} - plus {b}"]
# The secondary agent only named in passing: "..., and the price too".
ADD_ONS = ["{a}, and {b} too", "{a} - also {b}, if you can", "{a}; oh, and {b}", "{a} (and {b} as well)",
           "{a}, then {b}"]
ADD_ON_SHARE = 0.8

# Trace flows: ordered paths; the prompt chains one ask per agent with order cues.
FLOWS = [["product_search"], ["product_search", "price_lookup"], ["price_lookup", "product_comparison"],
         ["product_comparison", "price_lookup"], ["product_search", "price_lookup", "product_comparison"],
         ["product_search", "reviews_summary", "product_comparison"], ["order_status"],
         ["order_status", "returns_refunds"], ["returns_refunds", "payment_billing"], ["code_compliance_scan"],
         ["code_compliance_scan", "compliance_report"], ["dependency_audit", "license_check"],
         ["license_check", "dependency_audit"],
         ["code_compliance_scan", "dependency_audit", "license_check", "compliance_report"],
         ["order_status", "human_support_handoff"], ["human_support_handoff"]]
CHAINS = {2: ["{0}, then {1}", "first {0}, then {1}", "{0} and after that {1}", "{0}; once that's done, {1}"],
          3: ["first {0}, then {1}, and finally {2}", "{0}, then {1}, then {2}", "{0}; after that {1} and then {2}"],
          4: ["first {0}, then {1}, then {2}, and finally {3}", "{0}, then {1}, after that {2}, then {3}"]}


def _fill(rng: random.Random, template: str) -> str:
    brand, brand2 = rng.sample(BRANDS, 2)
    licence, licence2 = rng.sample(LICENCES, 2)
    return template.format(product=rng.choice(PRODUCTS), brand=brand, brand2=brand2, color=rng.choice(COLORS),
                           size=rng.choice(SIZES), repo=rng.choice(REPOS), licence=licence, licence2=licence2,
                           order=f"#{rng.randint(10000, 99999)}", postcode=f"{rng.randint(10000, 99999)}",
                           budget=rng.choice([50, 100, 150, 300]), lib=rng.choice(LIBS), country=rng.choice(COUNTRIES),
                           when=rng.choice(WHEN), money=rng.choice(MONEY), asset=rng.choice(ASSETS),
                           lang=rng.choice(LANGS), code_thing=rng.choice(CODE_THINGS), city=rng.choice(CITIES))


def _vary(rng: random.Random, text: str) -> str:
    """Surface noise: casing, end punctuation, a greeting or a sign-off."""
    if rng.random() < 0.2:
        text = rng.choice(OPENERS) + text
    closer = rng.choice(CLOSERS) if rng.random() < 0.15 else ""
    roll = rng.random()
    if roll < 0.05 and len(text) < 40:
        return text.upper() + closer
    if roll < 0.45:
        text = text[0].upper() + text[1:]
    if roll < 0.75 and not closer:
        return text + rng.choice(["", "?", ".", "!"])
    return text + closer


def _unique(rng: random.Random, make, count: int, seen: set[str]) -> list:
    out: list = []
    tries = 0
    while len(out) < count and tries < count * 50:
        tries += 1
        item = make()
        key = item[0].strip().lower()
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out


def _domain(agent: str) -> str:
    return next(domain for agent_id, domain, _ in AGENTS if agent_id == agent)


def _pick(rng: random.Random, pool: list[str], fresh: float | None) -> str:
    """A wording from the pool. Every fifth wording is held out of training: with `fresh` = 0 it
    is never picked, otherwise it is picked with that probability (None: the whole pool)."""
    if fresh is None:
        return rng.choice(pool)
    held = rng.random() < fresh
    return rng.choice([text for i, text in enumerate(pool) if (i % 5 == 4) == held])


def _ask(rng: random.Random, agent: str, distract: bool = False, fresh: float | None = None) -> str:
    """One unfilled ask for the agent; with `distract`, wrapped around a mention of a neighbour's topic."""
    ask = _pick(rng, ASKS[agent], fresh)
    if not distract:
        return ask
    domain = _domain(agent) if _domain(agent) != "support" else "shopping"
    other = rng.choice([a for a in MENTIONS if a != agent and _domain(a) in (domain, "support")])
    return rng.choice(DISTRACTORS).format(mention=rng.choice(MENTIONS[other]), ask=ask)


def _routing(rng: random.Random, share: float, fresh: float, seen: set[str]) -> list[dict]:
    """`share` of the routing prompts; `fresh` is the chance of a wording held out of training."""
    records = []
    for agent in ASKS:
        def single(agent: str = agent) -> tuple[str]:
            return (_vary(rng, _fill(rng, _ask(rng, agent, rng.random() < DISTRACTED, fresh))),)

        for prompt, in _unique(rng, single, round(PER_AGENT * share), seen):
            records.append({"prompt": prompt, "labels": {agent: 2}})

    def pair() -> tuple[str, str, str]:
        first, second = rng.choice(PAIRS)
        if rng.random() < ADD_ON_SHARE:
            text = rng.choice(ADD_ONS).format(a=_ask(rng, first, fresh=fresh), b=rng.choice(MENTIONS[second]))
        else:
            text = rng.choice(PAIR_JOINS).format(a=_ask(rng, first, fresh=fresh), b=_ask(rng, second, fresh=fresh))
        return _vary(rng, _fill(rng, text)), first, second

    for prompt, first, second in _unique(rng, pair, round(MULTI_AGENT * share), seen):
        records.append({"prompt": prompt, "labels": {first: 2, second: 1}})
    for prompt, in _unique(rng, lambda: (_vary(rng, _fill(rng, _pick(rng, OUT_OF_SCOPE, fresh))),),
                           round(OUT_OF_SCOPE_PROMPTS * share), seen):
        records.append({"prompt": prompt, "labels": {}})
    rng.shuffle(records)
    return records


def _traces(rng: random.Random, seen: set[str]) -> list[dict]:
    def make() -> tuple[str, list[str]]:
        path = rng.choice(FLOWS)
        asks = [_ask(rng, agent) for agent in path]
        text = asks[0] if len(path) == 1 else rng.choice(CHAINS[len(path)]).format(*asks)
        return _vary(rng, _fill(rng, text)), path

    records = [{"prompt": p, "path": path, "links": [list(link) for link in pairwise(path)],
                "outcome": "handoff" if path[-1] == "human_support_handoff" else "success"}
               for p, path in _unique(rng, make, 440, seen)]
    records += [{"prompt": p, "path": [], "links": [], "outcome": "abstained"}
                for p, in _unique(rng, lambda: (_vary(rng, _fill(rng, rng.choice(OUT_OF_SCOPE))),), 60, seen)]
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


# Follow-up questions about an item: (question with {ref}, stand-alone rewrite with {item}).
ITEM_QUESTIONS = [("How much is {ref}?", "How much is {item}?"), ("Does {ref} come in black?", "Does {item} come in black?"),
                  ("What do reviewers say about {ref}?", "What do reviewers say about {item}?"),
                  ("Can you ship {ref} to {country}?", "Can you ship {item} to {country}?"),
                  ("Is {ref} on sale?", "Is {item} on sale?"), ("How long is the warranty on {ref}?", "How long is the warranty on {item}?"),
                  ("Can I return {ref} if it doesn't fit?", "Can I return {item} if it doesn't fit?"),
                  ("Is {ref} in stock in size {size}?", "Is {item} in stock in size {size}?"),
                  ("How heavy is {ref}?", "How heavy is {item}?"), ("When could {ref} arrive?", "When could {item} arrive?"),
                  ("Any coupons for {ref}?", "Are there any coupons for {item}?"),
                  ("Would {ref} make a good gift?", "Would {item} make a good gift?")]
PRONOUNS = ["it", "that one", "this one", "that"]
ORDER_QUESTIONS = [("Can I still cancel it?", "Can I still cancel order {order}?"),
                   ("When will it get here?", "When will order {order} arrive?"),
                   ("Who is delivering it?", "Which courier is delivering order {order}?"),
                   ("Can you send it to my office instead?", "Can order {order} be delivered to my office instead?"),
                   ("How do I send it back?", "How do I return order {order}?"),
                   ("Was I charged for it yet?", "Have I been charged for order {order} yet?")]
COMPARE_QUESTIONS = [("Which one is lighter?", "Which is lighter, {item} or {item2}?"),
                     ("Which of them is cheaper?", "Which is cheaper, {item} or {item2}?"),
                     ("How much is the first one?", "How much is {item}?"), ("How much is the second one?", "How much is {item2}?"),
                     ("Do people like the {brand2} one?", "Do people like {item2}?"),
                     ("Is the {brand} one in stock?", "Is {item} in stock?")]


def _rewrite(rng: random.Random) -> tuple[str, str]:
    """A short conversation and a follow-up that only makes sense with it -> the stand-alone question."""
    brand, brand2 = rng.sample(BRANDS, 2)
    product, order = rng.choice(PRODUCTS), f"#{rng.randint(10000, 99999)}"
    item = f"the {rng.choice([brand, rng.choice(COLORS)])} {product}"
    item2 = f"the {brand2} {product}"
    fill = {"country": rng.choice(COUNTRIES), "size": rng.choice(SIZES), "brand": brand, "brand2": brand2,
            "order": order, "item": item, "item2": item2}
    kind = rng.random()
    if kind < 0.2:
        turns = [rng.choice([f"My order {order} hasn't arrived.", f"I placed order {order} {rng.choice(WHEN)}.",
                             f"What's happening with order {order}?"]),
                 rng.choice(["It left our warehouse yesterday.", "It is with the courier.", "It is being packed."])]
        question, rewrite = rng.choice(ORDER_QUESTIONS)
    elif kind < 0.4:
        turns = [rng.choice([f"I can't choose between {item} and {item2}.", f"Compare {item} with {item2}.",
                             f"I like {item} and {item2}."]),
                 rng.choice(["Both are popular.", "They are quite similar.", "Both are in stock."])]
        question, rewrite = rng.choice(COMPARE_QUESTIONS)
        if "{brand}" in question:  # "the Sony one" must name the first item's brand
            item = fill["item"] = f"the {brand} {product}"
    else:
        turns = [rng.choice([f"Do you have {item}?", f"I'm interested in {item}.", f"Tell me about {item}.",
                             f"Show me {item}.", f"My brother recommended {item}."]),
                 rng.choice(["Yes, it is in stock.", "We have it in three colours.", "It is one of our best sellers.",
                             "It got a new version this year.", "Sure, here it is."])]
        if rng.random() < 0.4:  # an older exchange about something else comes first
            other = f"the {rng.choice([b for b in BRANDS if b not in (brand, brand2)])} {rng.choice(PRODUCTS)}"
            turns = [f"Earlier I looked at {other}.", "Okay.", *turns]
        question, rewrite = rng.choice(ITEM_QUESTIONS)
        fill["ref"] = rng.choice(PRONOUNS)
    question = question.format(**fill)
    history = " | ".join(turns)
    return f"History: {history}\nQuestion: {question[0].upper() + question[1:]}", rewrite.format(**fill)


def _split(records: list, fractions: list[float]) -> list[list]:
    cuts, start, out = [round(f * len(records)) for f in fractions], 0, []
    for size in cuts[:-1]:
        out.append(records[start:start + size])
        start += size
    return [*out, records[start:]]


def traffic(known: list[str], share: float = 0.3, seed: int = 1013) -> list[dict]:
    """Routing rows worded only in the held-back wordings (every fifth of each pool, which
    training never sees and val/test only now and then) and none of the `known` prompts (compared
    stripped and lower-cased, as amo.validate does): live traffic for benchmarks/feedback_loop.py.
    Its own seeded generator, so write_demo_data's files are untouched by it."""
    rng = random.Random(seed)
    return _routing(rng, share, 1.0, {prompt.strip().lower() for prompt in known})


def write_demo_data(out_dir: Path, seed: int = 13) -> dict[str, int]:
    """Write the demo copilot's agents, routing splits, traces and two arm tasks into out_dir."""
    rng = random.Random(seed)
    out_dir = Path(out_dir)
    counts: dict[str, int] = {}
    agents = [{"id": i, "domain": d, "description": text, "tags": [d]} for i, d, text in AGENTS]
    write_jsonl(out_dir / "agents.jsonl", agents)
    counts["agents"] = len(agents)
    # Val and test also hold wordings that training never saw, as live traffic does.
    seen: set[str] = set()
    train = _routing(rng, 0.7, 0.0, seen)
    held = _routing(rng, 0.3, FRESH_SHARE, seen)
    for name, part in zip(["train", "val", "test"], [train, *_split(held, [0.5, 0.5])]):
        write_jsonl(out_dir / "routing" / f"{name}.jsonl", part)
        counts[f"routing_{name}"] = len(part)
    traces = _traces(rng, seen)
    for name, part in zip(["train", "test"], _split(traces, [0.8, 0.2])):
        write_jsonl(out_dir / "traces" / f"{name}.jsonl", part)
        counts[f"traces_{name}"] = len(part)
    for task, make in (("product_extraction", _extraction), ("query_rewrite", _rewrite)):
        examples = _unique(rng, lambda make=make: make(rng), 300, set())
        for name, part in zip(["train", "test"], _split(examples, [250 / 300, 50 / 300])):
            write_jsonl(out_dir / "tasks" / task / f"{name}.jsonl", [{"input": i, "output": o} for i, o in part])
            counts[f"task_{task}_{name}"] = len(part)
    return counts
