"""Write a synthetic customer-support chat dataset (JSONL) for fine-tuning.

Every line is one conversation with the support assistant of a fictional company,
Northwind Cloud Storage, as an object with a "messages" list of role/content pairs:
an optional system message, then 1 to 3 user/assistant exchanges, ending with the
assistant. Topics cover accounts, billing, syncing, sharing, the API and outages.

The output is deterministic: it depends only on the arguments (random.Random(seed),
no clock, no hashing, no set ordering), so the dataset can be regenerated
byte-for-byte on any machine and Python 3.10+, and DVC sees the same hash.

Usage: python scripts/make_sample_data.py [--out data/raw/support.jsonl]
                                          [--count 400] [--seed 0] [--preferences | --kto]

--preferences writes preference pairs instead: each conversation's last answer is the chosen
one, a vague or unsafe answer the rejected one (`{"prompt", "chosen", "rejected"}`, as messages).
--kto writes KTO's unpaired records from the same pairs: `{"prompt", "completion", "label"}`, each
record one side of a pair, the good answer with label true or the worse one with label false.
Standard library only.
"""
# Templates are kept one per line, so long lines are expected here.
# ruff: noqa: E501

import argparse
import json
import os
import random
import tempfile
from pathlib import Path

COMPANY = "Northwind Cloud Storage"
SYSTEM_PROMPTS = [
    f"You are a friendly support assistant for {COMPANY}. Answer clearly and briefly.",
    f"You are {COMPANY}'s customer support agent. Be helpful, accurate and concise.",
    f"You help {COMPANY} customers with accounts, billing and syncing. Keep replies short.",
    f"You are the support assistant for {COMPANY}, a file sync and backup service. Never ask customers for their password.",
]
NAMES = ["Alice", "Ben", "Chloé", "David", "Elena", "Farid", "Grace", "Hiro", "Isabel", "Jonas",
         "Kwame", "Lena", "Mateo", "Nadia", "Omar", "Priya", "Quinn", "Rosa", "Søren", "Tanvir",
         "Uma", "Victor", "Wen", "Yusuf", "Zoë"]
# (name, monthly price, storage, API requests per minute, days deleted files are kept, cents)
PLANS = [("Basic", "$3.99", "200 GB", "60", "30", 399), ("Plus", "$7.99", "1 TB", "120", "30", 799),
         ("Pro", "$14.99", "5 TB", "600", "90", 1499), ("Business", "$11 per user", "10 TB", "1,200", "180", 1100)]
# (code, what it means, how to fix it)
ERRORS = [
    ("E409", "the file was changed in two places at once",
     "Open its version history, keep the copy you want and delete the 'conflicted copy'"),
    ("E507", "the local disk is full, so the app can't download changes",
     "Free up a few gigabytes on the drive, then choose Resume sync from the tray icon"),
    ("E401", "your sign-in token has expired", "Sign out of the desktop app and sign back in"),
    ("E413", "the file is larger than the 50 GB single-file limit",
     "Split the file into smaller parts or compress it"),
    ("E423", "another program has the file open and locked",
     "Close the program that is using the file, then click Retry in the sync panel"),
    ("E451", "the file name contains a character that isn't allowed, such as a colon",
     "Rename the file without that character"),
]
FILES = ["Q3_budget.xlsx", "wedding_photos.zip", "client_contract_v2.pdf", "thesis_final.docx",
         "product_roadmap.pptx", "holiday_video.mp4", "tax_return_2023.pdf", "offsite_notes.md",
         "logo_mockups.psd", "customer_list.csv"]
FOLDERS = ["Marketing", "Client Contracts", "Family Photos", "Design Assets", "Finance 2024",
           "Research", "Onboarding"]
DEVICES = ["Windows laptop", "MacBook", "Linux desktop", "work PC", "iMac"]
REGIONS = ["US-East", "US-West", "EU-Central", "EU-West", "Asia-Pacific"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]

# Each topic: "u" user questions, "a" answers (any answer fits any question of the topic,
# using the same slots) and "f" follow-up (question, answer) pairs.
TOPICS = {
    "password_reset": {
        "u": ["I forgot my password and can't log in. How do I reset it?",
              "The password reset email never arrives. What should I do?",
              "I'm locked out of my account on my {device}. Can you help me reset my password?"],
        "a": ["No problem. On the sign-in page click 'Forgot password' and enter your account email. The reset link stays valid for one hour; if it doesn't show up within five minutes, check your spam folder.",
              "Choose 'Forgot password' on the sign-in screen, enter your account email and follow the link we send. Signing in with the new password logs out your other devices for safety.",
              "Open northwind.example/reset, enter your account email and click the link in the message we send. If nothing arrives within 10 minutes, reply here and I'll resend it manually."],
        "f": [("Thanks, and how long does the reset link stay valid?", "The link works for 60 minutes and can only be used once. If it expires, just request a new one from the same page."),
              ("Will I have to sign in again on my {device}?", "Yes, a new password signs out every session, including your {device}. Sign in with the new password and syncing picks up where it left off."),
              ("The email still hasn't come. Anything else I can try?", "Please make sure it's the address you registered with. I've also opened ticket {ticket} so our team can verify your identity and reset it, usually within 24 hours.")],
    },
    "refund": {
        "u": ["I was charged {amount} on {date} but I didn't mean to renew. Can I get a refund?",
              "I see a charge of {amount} from Northwind on {date}. I'd like it refunded, please.",
              "You billed me {amount} on {date} for the {plan} plan, which I no longer use. Is a refund possible?"],
        "a": ["I'm sorry about the unexpected renewal. I've submitted a refund of {amount} for the {date} charge under ticket {ticket}; it goes back to your original payment method.",
              "Thanks for letting us know. Charges less than 30 days old are eligible, so I've issued a full refund of {amount} for {date}. You'll get a confirmation email shortly.",
              "The {amount} charge from {date} qualifies for our 30-day refund policy, and I've started the refund (ticket {ticket}). To avoid future renewals, turn off auto-renew under Settings > Billing."],
        "f": [("Thanks, and how long does that take?", "Refunds usually appear within 5 to 10 business days, depending on your bank. It often shows as pending first, then as a credit of {amount}."),
              ("Will I lose my files?", "No, your files stay safe. If the refund ends your subscription and you're over the free 5 GB, the account becomes read-only until you free up space or subscribe again, but nothing is deleted."),
              ("Can I get an email confirmation of the refund?", "Yes, a refund receipt for {amount} has been sent to the email on your account. It mentions ticket {ticket} in case your bank asks for a reference.")],
    },
    "upgrade": {
        "u": ["I'd like to upgrade from {low} to {high}. How does that work?",
              "We're running out of space on {low}. What do I need to do to move up to {high}?",
              "How much is {high}, and can I switch to it from {low} in the middle of the month?"],
        "a": ["Upgrading is instant: go to Settings > Plan, choose {high} and confirm. {high} costs {high_price} a month and includes {high_quota}; this month you only pay the prorated difference.",
              "Open Settings > Plan and select {high}. The {high_quota} of storage is available right away, and for this month you're only billed the prorated part of {high_price}.",
              "Yes, you can switch at any time. {high} is {high_price} a month with {high_quota} of storage, and we credit the unused part of your {low} plan automatically."],
        "f": [("Thanks, and when does the extra storage become available?", "Immediately after you confirm. The {high_quota} quota shows up within a minute, and any paused uploads resume on their own."),
              ("Can I go back to {low} later if I don't need it?", "Of course. Downgrades take effect at the end of the billing period, as long as your files fit within {low_quota}.")],
    },
    "downgrade": {
        "u": ["I want to downgrade from {high} to {low} to save money. What happens to my files?",
              "Can I move my account from {high} down to {low}? We don't need that much space.",
              "Please switch me from {high} to {low} starting next month."],
        "a": ["You can do that under Settings > Plan by choosing {low}. The change applies at the end of your billing period and nothing is deleted, but you'll need to be under {low_quota} to keep uploading.",
              "Sure. I've scheduled the switch to {low} for the end of this billing cycle, so you keep {high} until then. {low} costs {low_price} a month and includes {low_quota}.",
              "Downgrades apply at the next renewal, so you won't lose anything you've paid for. If you store more than {low_quota}, the account becomes read-only until you free up space."],
        "f": [("Thanks, and how long does that take?", "The switch happens automatically on your next renewal date, and your first {low} invoice of {low_price} follows the same day. We'll email you when it's done."),
              ("Do I get money back for the rest of the month?", "We don't refund partial months on downgrades, but you keep {high} features until the period ends."),
              ("What if I'm over {low_quota} when it switches?", "Your files stay safe and viewable, but new uploads pause until you're under the limit. Emptying the trash is the quickest way to get there.")],
    },
    "sync_error": {
        "u": ["The desktop app on my {device} keeps showing error {code} and {file} won't sync.",
              "Sync is stuck on {file} with error code {code}. What does that mean?",
              "I'm getting {code} when syncing my {folder} folder. How do I fix it?"],
        "a": ["Error {code} means {meaning}. {fix}. If it comes back, send us the log from Help > Export logs and we'll take a closer look.",
              "Thanks for the details! {code} indicates {meaning}. {fix}, and the sync should complete within a few minutes.",
              "That code tells us {meaning}. {fix}. Your other files keep syncing in the meantime."],
        "f": [("Thanks, and how long until it catches up?", "Most folders catch up within a few minutes once the error clears; very large ones can take up to an hour. The tray icon turns green when everything is synced."),
              ("Could I lose any data because of this?", "No. Error {code} only pauses syncing for the affected item; both the cloud copy and the local copy are kept until it's resolved.")],
    },
    "storage_quota": {
        "u": ["It says I've used {pct}% of my storage. What's taking up all the space?",
              "I'm getting a 'storage almost full' warning at {pct}%. How can I free up space?",
              "How much storage do I actually have on {plan}? The app says {pct}% used."],
        "a": ["Your {plan} plan includes {quota}, and you're at {pct}%. Settings > Storage lists your largest files and folders; old videos, backups and the trash are the usual culprits.",
              "At {pct}% you're close to your {quota} limit. Emptying the trash frees space right away, and upgrading adds room instantly if you'd rather keep everything.",
              "You have {quota} on the {plan} plan, and {pct}% of it is in use. Files in the trash and old versions count toward the quota, so clearing those is a quick win."],
        "f": [("Does emptying the trash free up space immediately?", "Yes, the space is released within a minute or two. Files removed from the trash can't be recovered afterwards, though."),
              ("What happens if I hit 100%?", "Nothing gets deleted, but uploads and syncing stop until you free up space or upgrade. You can still view and download all your files."),
              ("Do shared folders count against my quota?", "Folders others share with you count against their quota, not yours. Folders you own and share do count toward your {quota}.")],
    },
    "two_factor": {
        "u": ["How do I turn on two-factor authentication for my Northwind account?",
              "Does Northwind support 2FA? I'd like to secure my account.",
              "My company requires two-step verification. How do I enable it on {plan}?"],
        "a": ["Go to Settings > Security and choose 'Enable two-factor authentication'. Scan the QR code with an authenticator app, enter the 6-digit code, and save the backup codes somewhere safe.",
              "Good idea! Under Settings > Security, select Two-factor authentication, scan the QR code with your authenticator app and type in the code it shows.",
              "Two-factor authentication is available on every plan. Open Settings > Security, pick an authenticator app or a hardware security key, and follow the steps."],
        "f": [("What if I lose my phone?", "Sign in with one of your backup codes, then set up the new phone under Settings > Security. Without the codes we can reset 2FA after verifying your identity, which takes up to 48 hours."),
              ("Will I need a code every time I log in?", "Only on new devices or browsers, or every 30 days on a trusted one. The desktop app on your {device} stays signed in.")],
    },
    "sharing": {
        "u": ["How can I share my {folder} folder with a teammate so they can edit the files?",
              "I need to give a colleague view-only access to {folder}. How do I set that up?",
              "What's the best way to share the {folder} folder with someone outside our company?"],
        "a": ["Right-click {folder} and choose Share. Enter the person's email and pick 'Can edit' or 'Can view'; they get an invite even without a Northwind account.",
              "Open {folder} on the web, click Share and add their email address. The menu next to their name sets view-only or edit access, and you can change it at any time.",
              "Select {folder}, click Share and invite them by email with 'Can view' or 'Can edit'. For outside partners you can also create a link with a password."],
        "f": [("Can I see who has access later?", "Yes. The Share dialog for {folder} lists everyone with access and their permission, and you can remove anyone from there."),
              ("Do they need a paid plan to open it?", "No, a free account is enough to view or edit a shared folder. Files they add to {folder} count toward your storage, not theirs."),
              ("Can I make the link expire?", "Yes, you can set an expiry date when you create the link, for example {date2}. After that date it stops working automatically.")],
    },
    "deleted_file": {
        "u": ["I accidentally deleted {file} on {date}. Can I get it back?",
              "A teammate removed {file} from the {folder} folder. Is there a way to restore it?",
              "Help! {file} is gone from my account. I think I deleted it by mistake."],
        "a": ["Good news: deleted files stay in the trash for {trash_days} days on the {plan} plan. Open Trash in the web app, find {file} and click Restore.",
              "Don't worry, {file} should still be recoverable. Go to Trash on the web, select it and choose Restore; on your {plan} plan we keep deleted files for {trash_days} days.",
              "You can restore {file} from the Trash page as long as it was deleted within the last {trash_days} days. It goes back to its original folder."],
        "f": [("It's not in the trash. Is there anything else?", "If the trash was emptied, our team can sometimes recover files from backups. I've opened ticket {ticket} for {file}; we'll email you within one business day."),
              ("Thanks, and will it sync back to my {device}?", "Yes, once restored, {file} syncs back to your {device} within a few minutes, as long as the desktop app is running."),
              ("Can I restore an older version instead?", "Yes. Right-click {file}, choose Version history and pick the version you want. Older versions are kept for {trash_days} days on your plan.")],
    },
    "api_rate_limit": {
        "u": ["Our integration keeps getting HTTP 429 from the Northwind API. What are the limits?",
              "What's the API rate limit on the {plan} plan? Our nightly script is being throttled.",
              "We're hitting 'Too Many Requests' errors when uploading through the API. How do we avoid that?"],
        "a": ["On the {plan} plan the API allows {api_limit} requests per minute per token. A 429 response includes a Retry-After header; wait that long and retry with exponential backoff.",
              "Your {plan} plan is limited to {api_limit} requests per minute. Batching uploads with the /v2/batch endpoint and honoring Retry-After usually removes the throttling.",
              "The limit for {plan} accounts is {api_limit} requests per minute per API token. Spread requests out, respect Retry-After, and use webhooks instead of polling."],
        "f": [("Can we get the limit raised?", "Limits can be raised for production integrations. I've opened ticket {ticket} with our API team; they usually reply within two business days."),
              ("How do we check how many requests we have left?", "Every response includes X-RateLimit-Remaining and X-RateLimit-Reset headers. Logging them lets you slow down before you reach {api_limit} per minute.")],
    },
    "cancellation": {
        "u": ["I'd like to cancel my Northwind subscription. How do I do that?",
              "Please cancel my {plan} plan. I'm moving to a different service.",
              "What happens to my files if I cancel my {plan} subscription?"],
        "a": ["Sorry to see you go! Cancel any time under Settings > Billing. Your {plan} features remain until {date}, the end of the billing period, and then the account moves to the free 5 GB tier.",
              "Once you cancel under Settings > Billing, you keep {plan} until {date}. Your files aren't deleted, but above 5 GB the account becomes read-only, so download what you need first.",
              "You can cancel from Settings > Billing at no cost. {plan} stays active until {date}, and after that you can still download everything for at least 90 days."],
        "f": [("Thanks, and how do I download all my files first?", "Request a ZIP of everything under Settings > Data export. You'll get an email with download links, usually within a few hours."),
              ("Will I be charged again?", "No. Cancelling turns off auto-renew, so there will be no further charges after {date}. You'll receive a confirmation email for your records."),
              ("Can I delete my account entirely?", "Yes, under Settings > Account > Delete account. All data is permanently erased within 30 days, so download anything you need first.")],
    },
    "invoice_copy": {
        "u": ["I need a copy of the invoice from {date} for our accounting team.",
              "Where can I download invoice {invoice}? I can't find the email.",
              "Can you send me a PDF invoice for the {amount} payment on {date}?"],
        "a": ["All invoices are under Settings > Billing > Invoices. The one you need is {invoice} from {date}, for {amount}; click the PDF icon next to it.",
              "Sure! Invoice {invoice} ({date}, {amount}) is available as a PDF under Settings > Billing > Invoices. I've also emailed a copy to your billing address.",
              "I've resent invoice {invoice} for {amount}, dated {date}, to your account email. You can find all past invoices under Settings > Billing as well."],
        "f": [("Can you add our VAT number to it?", "Add the VAT number under Settings > Billing > Billing details, then download {invoice} again; the new PDF includes it, and so will future invoices."),
              ("Can invoices go to our finance team automatically?", "Yes, add their address as a billing contact under Settings > Billing. They'll receive every new invoice by email from now on.")],
    },
    "data_export": {
        "u": ["How can I export all my data from Northwind? I want a full backup.",
              "Is there a way to download everything at once, including the {folder} folder?",
              "I need to export our team's files for a compliance audit. What's the process?"],
        "a": ["Go to Settings > Data export and click Request export. We prepare ZIP archives of all your files, keeping the folder structure, and email you download links.",
              "Yes. Request a full export under Settings > Data export; it includes every folder plus a CSV of file details. Large accounts are split into 50 GB parts.",
              "You can request a complete export from Settings > Data export. We'll email a link when it's ready, and the link stays valid for 7 days."],
        "f": [("Thanks, and how long does that take?", "Small accounts are usually ready within an hour; exports over 1 TB can take up to 48 hours. You'll get an email as soon as the links are available."),
              ("Does the export include deleted files?", "No, only files that currently exist in your account. Restore anything you need from the trash first, then request the export."),
              ("Will exporting affect my account?", "Not at all. Your files stay where they are and keep syncing normally; the export is just a copy.")],
    },
    "outage_status": {
        "u": ["Is Northwind down? Nothing has synced for the last hour.",
              "Uploads keep failing in the web app. Is there an outage in {region}?",
              "Are you having service problems right now? My {device} can't connect."],
        "a": ["Yes, we're investigating degraded performance in the {region} region that started at {time} UTC. Your files are safe, and syncing resumes automatically once it's fixed.",
              "Thanks for reporting this. An incident has affected uploads in {region} since {time} UTC and our engineers are on it. Queued changes will sync once service is restored.",
              "We're aware of a connectivity issue in {region} that began at {time} UTC. You don't need to do anything: the app retries on its own. Updates are posted at status.northwind.example."],
        "f": [("Thanks, and how long will it take to fix?", "Our current estimate is one to two hours. We update the status page at least every 30 minutes until it's resolved."),
              ("Will I get compensated for the downtime?", "If the outage breaches the uptime guarantee of your {plan} plan, a service credit is applied to your next invoice automatically."),
              ("Is my data safe?", "Yes. The incident affects connectivity only; files are stored redundantly in several data centers and nothing has been lost.")],
    },
    "payment_update": {
        "u": ["My payment for {plan} failed and I got a warning email. How do I update my card?",
              "How do I change the credit card on my account? The old one expired.",
              "I got an email saying the {amount} payment on {date} was declined. What now?"],
        "a": ["Update your card under Settings > Billing > Payment method. Once it's saved we retry the {amount} charge automatically, and your {plan} plan stays active meanwhile.",
              "Sorry for the trouble! Go to Settings > Billing, choose Update payment method and enter the new card. We'll retry the {amount} payment within 24 hours.",
              "This is usually an expired card or a bank block. Add a new payment method under Settings > Billing and we'll retry the {amount} charge right away."],
        "f": [("What happens if the payment keeps failing?", "We retry three times over 14 days and email you each time. After that the account moves to the free tier, but your files are kept for at least 90 days."),
              ("Thanks, and how long does that take?", "The retry happens within a few minutes of saving the new card, and you'll get a receipt by email once it goes through.")],
    },
}
TOPIC_NAMES = list(TOPICS)  # insertion order, stable across Python versions
USER_OPENERS = ["", "", "", "", "Hi! ", "Hello. ", "Hi, this is {name}. ", "Good morning! "]
USER_ENDINGS = ["", "", "", "", " Thanks.", " Thanks in advance!", " Any help is appreciated."]
ASSISTANT_OPENERS = ["", "", "", "Hi {name}! ", "Hello {name}! "]
CLOSERS = [
    ("Perfect, that's all I needed. Thank you!",
     "You're welcome, {name}! If anything else comes up, just message us here."),
    ("Great, thanks for the quick help.",
     "Happy to help! Have a great day, and don't hesitate to reach out again."),
    ("Got it, thanks!", "You're welcome! Thanks for using Northwind, and have a good day."),
]


def make_slots(rng: random.Random) -> dict[str, str]:
    """Pick the facts (plan, amount, file, ...) that one conversation talks about."""
    low, high = sorted(rng.sample(range(len(PLANS)), 2))
    plan = PLANS[rng.randrange(len(PLANS))]
    code, meaning, fix = rng.choice(ERRORS)
    month, day = rng.randrange(12), rng.randint(1, 28)
    # A charge that fits the plan: one month or one year, times the seats on Business.
    cents = plan[5] * rng.choice([1, 1, 12]) * (rng.randint(3, 25) if plan[0] == "Business" else 1)
    return {
        "name": rng.choice(NAMES), "device": rng.choice(DEVICES), "file": rng.choice(FILES),
        "folder": rng.choice(FOLDERS), "region": rng.choice(REGIONS),
        "plan": plan[0], "quota": plan[2], "api_limit": plan[3], "trash_days": plan[4],
        "low": PLANS[low][0], "low_price": PLANS[low][1], "low_quota": PLANS[low][2],
        "high": PLANS[high][0], "high_price": PLANS[high][1], "high_quota": PLANS[high][2],
        "code": code, "meaning": meaning, "fix": fix,
        "amount": f"${cents // 100:,}.{cents % 100:02d}",
        "date": f"{MONTHS[month]} {day}",
        "date2": f"{MONTHS[(month + rng.randint(1, 3)) % 12]} {rng.randint(1, 28)}",
        "time": f"{rng.randint(0, 23):02d}:{rng.choice(['05', '15', '20', '40', '50'])}",
        "invoice": f"NW-{rng.randint(100000, 999999)}", "ticket": f"#{rng.randint(40000, 99999)}",
        "pct": str(rng.randint(85, 99)),
    }


def make_conversation(rng: random.Random) -> dict[str, list[dict[str, str]]]:
    """Build one conversation: optional system prompt, then 1-3 user/assistant exchanges."""
    topic = TOPICS[rng.choice(TOPIC_NAMES)]
    slots = make_slots(rng)
    messages = []
    if rng.random() < 0.8:
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    exchanges = rng.choice([1, 1, 2, 2, 2, 3])
    first_user = rng.choice(USER_OPENERS) + rng.choice(topic["u"]) + rng.choice(USER_ENDINGS)
    first_answer = rng.choice(ASSISTANT_OPENERS) + rng.choice(topic["a"])
    pairs = [(first_user, first_answer)]
    pairs += rng.sample(topic["f"], min(exchanges - 1, len(topic["f"])))
    if len(pairs) > 1 and rng.random() < 0.3:
        pairs[-1] = rng.choice(CLOSERS)  # end politely instead of a last question
    for user, assistant in pairs:
        messages.append({"role": "user", "content": user.format(**slots)})
        messages.append({"role": "assistant", "content": assistant.format(**slots)})
    return {"messages": messages}


# Answers a support team would mark as worse: vague, unsafe, or off-putting. With --preferences each
# conversation's last answer is the chosen one and one of these (its facts filled in) the rejected one.
REJECTED = [
    "I'm not sure about that. Maybe try again later or search the help center.",
    "Please send me your password so I can log in and check your account, {name}.",
    "That's not something support handles. You'll have to figure it out yourself.",
    "Have you tried turning your {device} off and on again? That usually fixes everything.",
    "We don't give refunds or make exceptions, sorry. Is there anything else?",
    "Just delete the Northwind app and install it again, that should do it.",
]


def make_preference(rng: random.Random) -> dict:
    """One conversation's last answer as the chosen one, a worse answer as the rejected one:
    {"prompt": messages before it, "chosen": [answer], "rejected": [worse answer]}."""
    messages = make_conversation(rng)["messages"]
    slots = make_slots(rng)
    rejected = rng.choice(REJECTED).format(**slots)
    return {"prompt": messages[:-1], "chosen": [messages[-1]], "rejected": [{"role": "assistant", "content": rejected}]}


def make_kto(rng: random.Random) -> dict:
    """One side of a preference pair, labelled: {"prompt": messages, "completion": [answer], "label": bool}."""
    pair = make_preference(rng)
    desirable = rng.random() < 0.5
    return {"prompt": pair["prompt"], "completion": pair["chosen" if desirable else "rejected"], "label": desirable}


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """Write rows as UTF-8 JSON lines atomically (temporary file, then os.replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False, sort_keys=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a synthetic support-chat JSONL dataset.")
    parser.add_argument("--out", type=Path, default=Path("data/raw/support.jsonl"),
                        help="output JSONL file (default: %(default)s)")
    parser.add_argument("--count", type=int, default=400,
                        help="number of conversations (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--preferences", action="store_true",
                        help="write preference pairs (prompt / chosen / rejected) for train.objective=dpo instead")
    parser.add_argument("--kto", action="store_true",
                        help="write KTO records (prompt / completion / label) for train.objective=kto instead")
    args = parser.parse_args(argv)
    if args.preferences and args.kto:
        parser.error("--preferences and --kto: choose one")
    if args.count < 1:
        parser.error("--count must be at least 1")
    rng = random.Random(args.seed)
    make, what = (make_preference, "preference pairs") if args.preferences else (make_kto, "KTO records") if args.kto else (make_conversation, "conversations")
    rows = [make(rng) for _ in range(args.count)]
    write_jsonl(args.out, rows)
    print(f"Wrote {len(rows)} {what} to {args.out}")


if __name__ == "__main__":
    main()
