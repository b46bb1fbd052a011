"""CLINC150 (Larson et al., 2019): 150 intents in 10 domains, plus out-of-scope prompts.

Each intent becomes an agent (its domain kept from `domains.json`) with a one-sentence
description written for this project, since the data set has none. Out-of-scope records get
labels {}. The published splits are kept: train/val/test hold the in-scope records followed by
the matching oos_train/oos_val/oos_test records.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from amo.importers import Imported, Record, SourceError, require

SPLITS = {"train": "oos_train", "val": "oos_val", "test": "oos_test"}
OUT_OF_SCOPE = "oos"

# intent -> what the agent does; written from the intent's name (project text).
DESCRIPTIONS: dict[str, str] = {
    # banking
    "freeze_account": "Freezes or locks a bank account so no money can move in or out of it.",
    "routing": "Gives the routing number of the user's bank account for transfers and deposits.",
    "pin_change": "Changes or resets the PIN code of a bank account or debit card.",
    "bill_due": "Tells when a bill is due and the date of the next payment deadline.",
    "pay_bill": "Pays a bill such as rent, electricity, water or phone from the user's account.",
    "account_blocked": "Explains why a bank account is blocked or locked and how to unblock it.",
    "interest_rate": "Reports the interest rate earned or charged on a bank account or loan.",
    "min_payment": "Tells the minimum payment due on a credit card or loan this cycle.",
    "bill_balance": "Reports how much is still owed on a utility, phone or other bill.",
    "transfer": "Moves money between the user's accounts or sends it to another person.",
    "order_checks": "Orders a new book of paper checks for a checking account.",
    "balance": "Reports the current balance of a checking or savings account.",
    "spending_history": "Summarises how much the user spent recently, by category or period.",
    "transactions": "Lists the recent transactions and purchases on an account.",
    "report_fraud": "Reports suspicious or fraudulent charges on an account or card.",
    # credit_cards
    "replacement_card_duration": "Estimates how long a replacement credit or debit card takes to arrive.",
    "expiration_date": "Tells when the user's credit or debit card expires.",
    "damaged_card": "Handles a card that is broken, cracked or no longer reads at terminals.",
    "improve_credit_score": "Gives advice on how to raise a credit score.",
    "report_lost_card": "Reports a lost or stolen credit or debit card and blocks it.",
    "card_declined": "Explains why a card payment was declined or rejected.",
    "credit_limit_change": "Requests an increase or decrease of a credit card's spending limit.",
    "apr": "Reports the annual percentage rate (APR) charged on a credit card.",
    "redeem_rewards": "Redeems credit card reward points or cash back for travel, gifts or credit.",
    "credit_limit": "Tells the current credit limit on a credit card.",
    "rewards_balance": "Reports how many reward points or how much cash back a card has earned.",
    "application_status": "Checks the status of a pending credit card application.",
    "credit_score": "Reports the user's current credit score.",
    "new_card": "Applies for a new credit card.",
    "international_fees": "Tells whether a card charges foreign transaction fees when used abroad.",
    # kitchen_and_dining
    "food_last": "Tells how long a food keeps in the fridge or freezer before it goes bad.",
    "confirm_reservation": "Confirms that an existing restaurant reservation is booked.",
    "how_busy": "Tells how crowded a restaurant is right now and how long the wait is.",
    "ingredients_list": "Lists the ingredients needed to make a dish.",
    "calories": "Reports how many calories a food or meal contains.",
    "nutrition_info": "Gives nutrition facts of a food such as protein, fat, carbohydrates and vitamins.",
    "recipe": "Finds a recipe and cooking instructions for a dish.",
    "restaurant_reviews": "Reports what reviewers and ratings say about a restaurant.",
    "restaurant_reservation": "Books a table at a restaurant for a given time and party size.",
    "meal_suggestion": "Suggests something to cook or eat for a meal.",
    "restaurant_suggestion": "Recommends a restaurant to eat at, by cuisine or location.",
    "cancel_reservation": "Cancels an existing restaurant reservation.",
    "ingredient_substitution": "Suggests what to use in place of an ingredient in a recipe.",
    "cook_time": "Tells how long a dish needs to cook or bake.",
    "accept_reservations": "Tells whether a restaurant takes reservations.",
    # home
    "what_song": "Names the song that is currently playing.",
    "play_music": "Plays a song, artist, album or genre of music.",
    "todo_list_update": "Adds or removes an item on the user's to-do list.",
    "reminder": "Tells the user what reminders they have set.",
    "reminder_update": "Creates or changes a reminder for a task at a given time.",
    "calendar_update": "Adds, moves or deletes an event in the user's calendar.",
    "order_status": "Tracks an online order and tells when the package will arrive.",
    "update_playlist": "Adds a song to or removes one from a music playlist.",
    "shopping_list": "Reads out what is on the user's shopping list.",
    "calendar": "Tells what events are on the user's calendar for a day.",
    "next_song": "Skips to the next song in the music queue.",
    "order": "Places an order to buy a product online.",
    "todo_list": "Reads out the tasks on the user's to-do list.",
    "shopping_list_update": "Adds items to or removes items from the shopping list.",
    "smart_home": "Controls smart home devices such as lights, thermostat, locks and appliances.",
    # auto_and_commute
    "current_location": "Tells the user where they are right now.",
    "oil_change_when": "Tells when the car's next oil change is due.",
    "oil_change_how": "Explains how to change the oil in a car.",
    "uber": "Books a ride with Uber or a similar ride-hailing service.",
    "traffic": "Reports traffic conditions on the way to a place or on a road.",
    "tire_pressure": "Reports the car's tire pressure or the recommended pressure.",
    "schedule_maintenance": "Books a car service or maintenance appointment at a garage.",
    "gas": "Reports how much fuel is left in the car's tank.",
    "mpg": "Reports the car's fuel economy in miles per gallon.",
    "distance": "Tells how far away a place is or how long it takes to get there.",
    "directions": "Gives turn-by-turn directions to a destination.",
    "last_maintenance": "Tells when the car last had its maintenance or service done.",
    "gas_type": "Tells which type of fuel the car takes.",
    "tire_change": "Explains how or when to change a flat or worn car tire.",
    "jump_start": "Explains how to jump start a car with a dead battery.",
    # travel
    "plug_type": "Tells which electrical plug and socket type a country uses.",
    "travel_notification": "Tells the bank about an upcoming trip so cards keep working abroad.",
    "translate": "Translates a word or phrase into another language.",
    "flight_status": "Reports whether a flight is on time, delayed or at which gate it leaves.",
    "international_visa": "Tells whether a visa is needed to travel to a country.",
    "timezone": "Tells which time zone a place is in or the time difference between places.",
    "exchange_rate": "Gives the exchange rate between two currencies.",
    "travel_suggestion": "Suggests places to visit and things to do at a travel destination.",
    "travel_alert": "Reports travel warnings and safety advisories for a country.",
    "vaccines": "Tells which vaccinations are needed before travelling to a country.",
    "lost_luggage": "Helps find luggage that an airline lost or delayed.",
    "book_flight": "Books a plane ticket between two cities.",
    "book_hotel": "Books a hotel room for a stay in a city.",
    "carry_on": "Tells the carry-on baggage rules and size limits of an airline.",
    "car_rental": "Rents a car at a destination.",
    # utility
    "weather": "Gives the weather forecast, temperature or chance of rain for a place.",
    "alarm": "Sets an alarm to go off at a given time.",
    "date": "Tells today's date or the date of a given day.",
    "find_phone": "Helps locate the user's lost phone, for example by making it ring.",
    "share_location": "Shares the user's current location with a contact.",
    "timer": "Starts a countdown timer for a number of minutes or seconds.",
    "make_call": "Places a phone call to a contact or number.",
    "calculator": "Does arithmetic such as adding, multiplying or taking a percentage of numbers.",
    "definition": "Gives the dictionary definition of a word.",
    "measurement_conversion": "Converts a quantity between units such as miles, kilograms, cups or degrees.",
    "flip_coin": "Flips a coin and says heads or tails.",
    "spelling": "Spells out a word letter by letter.",
    "time": "Tells the current time, here or in another city.",
    "roll_dice": "Rolls one or more dice and reports the result.",
    "text": "Sends a text message to a contact.",
    # work
    "pto_request_status": "Checks whether a paid time off request was approved.",
    "next_holiday": "Tells when the next public or company holiday is.",
    "insurance_change": "Changes the user's health or other insurance plan at work.",
    "insurance": "Describes the user's current insurance plan and benefits.",
    "meeting_schedule": "Tells what meetings the user has scheduled and when.",
    "payday": "Tells when the next paycheck arrives.",
    "taxes": "Answers questions about income tax returns, refunds and filing.",
    "income": "Reports how much the user earns in salary or wages.",
    "rollover_401k": "Explains how to roll a 401k retirement account over to another plan.",
    "pto_balance": "Reports how many paid vacation or sick days the user has left.",
    "pto_request": "Requests paid time off from work for given days.",
    "w2": "Explains how to get the W-2 tax form from an employer.",
    "schedule_meeting": "Schedules a meeting with colleagues or books a meeting room.",
    "direct_deposit": "Sets up direct deposit of a paycheck into a bank account.",
    "pto_used": "Reports how many days of paid time off the user has already taken.",
    # small_talk
    "who_made_you": "Answers who built or created the assistant.",
    "meaning_of_life": "Answers questions about the meaning or purpose of life.",
    "who_do_you_work_for": "Answers who the assistant works for or serves.",
    "do_you_have_pets": "Answers whether the assistant has any pets.",
    "what_are_your_hobbies": "Answers what the assistant likes to do for fun and its hobbies.",
    "fun_fact": "Tells an interesting fun fact or piece of trivia.",
    "what_is_your_name": "Tells the assistant's name.",
    "where_are_you_from": "Answers where the assistant comes from or lives.",
    "goodbye": "Answers the user saying goodbye and ending the conversation.",
    "thank_you": "Answers the user thanking the assistant.",
    "greeting": "Answers a hello or a how-are-you greeting from the user.",
    "tell_joke": "Tells the user a joke.",
    "are_you_a_bot": "Answers whether the user is talking to a computer program or a real person.",
    "how_old_are_you": "Answers how old the assistant is.",
    "what_can_i_ask_you": "Explains what the assistant can do and what the user can ask it.",
    # meta
    "change_speed": "Makes the assistant talk faster or slower.",
    "user_name": "Tells the user what name the assistant knows them by.",
    "whisper_mode": "Switches the assistant to whisper mode so it speaks quietly.",
    "yes": "Handles the user answering yes or agreeing.",
    "change_volume": "Turns the assistant's speaking volume up or down.",
    "no": "Handles the user answering no or disagreeing.",
    "change_language": "Switches the language the assistant speaks in.",
    "repeat": "Repeats the assistant's last answer again.",
    "change_accent": "Changes the accent of the assistant's voice.",
    "cancel": "Cancels or stops the current request.",
    "sync_device": "Pairs or syncs the assistant with the user's phone or another device.",
    "change_user_name": "Changes the name the assistant calls the user.",
    "change_ai_name": "Gives the assistant a new name to be called by.",
    "reset_settings": "Resets the assistant's settings to the factory defaults.",
    "maybe": "Handles the user answering maybe or being unsure.",
}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SourceError(f"{path}: not valid JSON: {exc}") from None


def _domains(path: Path) -> dict[str, str]:
    raw = _read_json(path)
    if not isinstance(raw, dict) or not all(isinstance(v, list) for v in raw.values()):
        raise SourceError(f"{path}: expected {{domain: [intent, ...]}}")
    domain_of = {intent: domain for domain, intents in raw.items() for intent in intents}
    unknown = sorted(set(domain_of) - set(DESCRIPTIONS))
    if unknown:
        raise SourceError(f"{path}: intents without a description: {', '.join(unknown[:5])}")
    return domain_of


def _records(path: Path, raw: dict[str, Any], key: str, domain_of: dict[str, str]) -> list[Record]:
    rows = raw.get(key)
    if not isinstance(rows, list):
        raise SourceError(f"{path}: missing split {key!r} (a list of [text, intent])")
    records = []
    for i, row in enumerate(rows):
        if not (isinstance(row, list) and len(row) == 2 and all(isinstance(v, str) for v in row)):
            raise SourceError(f"{path}: {key} row {i}: expected [text, intent], got {row!r}")
        text, intent = row
        if intent != OUT_OF_SCOPE and intent not in domain_of:
            raise SourceError(f"{path}: {key} row {i}: intent {intent!r} is not in domains.json")
        records.append({"prompt": text, "labels": {} if intent == OUT_OF_SCOPE else {intent: 1}})
    return records


def load(source: Path, seed: int) -> Imported:
    """Agents for the 150 intents and routing splits train/val/test (in-scope then out-of-scope).

    The splits are the published ones, so `seed` is unused.
    """
    data_path, domains_path = require(source, "data_full.json", "domains.json")
    domain_of = _domains(domains_path)
    raw = _read_json(data_path)
    if not isinstance(raw, dict):
        raise SourceError(f"{data_path}: expected an object with train/val/test/oos_* lists")
    agents = [{"id": intent, "description": DESCRIPTIONS[intent], "domain": domain_of[intent],
               "tags": [domain_of[intent]]} for intent in domain_of]
    routing = {split: _records(data_path, raw, split, domain_of) + _records(data_path, raw, oos, domain_of)
               for split, oos in SPLITS.items()}
    return Imported(name="clinc150", agents=agents, routing=routing)
