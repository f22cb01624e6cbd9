"""Validate the answers before anything is generated.

Answers are read as JSON literals (never pasted into Python source), so a project name
containing quotes, backslashes or code is just a string here. Each problem is reported on
one line naming the field and the rule; nothing is generated until all answers are valid.
"""

import ipaddress
import json
import keyword
import re
import sys
import urllib.parse

ANSWERS = json.loads(r"""
{{ cookiecutter | tojson }}
""")

CLOUDS = {"aws", "gcp", "azure", "lambda", "runpod", "vast", "kubernetes", "oci", "nebius", "paperspace", "fluidstack", "cudo"}
# Package names that would shadow a dependency or the test folder when imported.
RESERVED_PACKAGES = {"torch", "transformers", "peft", "accelerate", "mlflow", "dvc", "yaml", "tests", "test", "data", "sky"}
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_text(field, limit=200):
    value = ANSWERS[field]
    if not value.strip():
        return "must not be empty"
    if CONTROL.search(value):
        return "must be a single line without control characters (newlines, tabs)"
    if len(value) > limit:
        return f"must be at most {limit} characters"
    return None


def check_slug(value):
    if not re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,62}[a-z0-9])?", value):
        return "must be lowercase letters, digits and dashes, not starting or ending with a dash (e.g. support-bot)"
    return None


def check_package(value):
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", value):
        return "must be a Python identifier in lowercase: letters, digits, underscores (e.g. support_bot)"
    if keyword.iskeyword(value) or value in RESERVED_PACKAGES or value in sys.stdlib_module_names:
        return "must not be a Python keyword or shadow a module the project imports"
    return None


def check_repository(value):
    if not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9._-]{1,100}", value):
        return "must be owner/name as on GitHub (e.g. acme/support-bot)"
    return None


def check_base_model(value):
    if CONTROL.search(value) or " " in value or not value:
        return "must be a hub id (owner/name) or a local directory, without spaces"
    if value.startswith(("/", ".", "~")):
        return None
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", value):
        return "must be a Hugging Face hub id like Qwen/Qwen2.5-0.5B-Instruct (or a path starting with /, ./ or ~)"
    return None


def check_clouds(value):
    clouds = [c.strip() for c in value.split(",")]
    if not value.strip():
        return f"must name at least one of: {', '.join(sorted(CLOUDS))}"
    if "" in clouds:
        return "has an empty entry (two commas in a row, or a trailing comma)"
    unknown = [c for c in clouds if c not in CLOUDS]
    if unknown:
        return f"unknown cloud {unknown[0]!r}; choose from: {', '.join(sorted(CLOUDS))}"
    if len(set(clouds)) != len(clouds):
        return "lists a cloud twice"
    return None


def check_bucket(value):
    store = ANSWERS["checkpoint_store"]
    if not 3 <= len(value) <= 63:
        return f"{store} bucket names are 3 to 63 characters"
    if store == "s3":
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]*[a-z0-9]", value) or ".." in value or ".-" in value or "-." in value:
            return "S3 bucket names use lowercase letters, digits, dots and dashes, starting and ending with a letter or digit"
        try:
            ipaddress.ip_address(value)
            return "S3 bucket names must not look like an IP address"
        except ValueError:
            return None
    if store == "gcs":
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*[a-z0-9]", value) or value.startswith("goog"):
            return "GCS bucket names use lowercase letters, digits, dashes and underscores (no dots here), not starting with 'goog'"
        return None
    if store == "r2":
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]*[a-z0-9]", value):
            return "R2 bucket names use lowercase letters, digits and dashes, starting and ending with a letter or digit"
        return None
    if not re.fullmatch(r"[a-z0-9](?:[a-z0-9]|-(?!-))*[a-z0-9]", value):
        return "Azure container names use lowercase letters, digits and single dashes, starting and ending with a letter or digit"
    return None


def check_dvc_remote_url(value):
    remote = ANSWERS["dvc_remote"]
    if CONTROL.search(value) or " " in value:
        return "must not contain spaces or control characters"
    prefix = {"s3": "s3://", "gs": "gs://", "azure": "azure://"}.get(remote)
    if value and prefix and not value.startswith(prefix):
        return f"a {remote} remote URL starts with {prefix} (or leave it empty for {prefix}<checkpoint bucket>/dvc)"
    if value and remote == "local" and "://" in value:
        return "the local remote is a folder path, not a URL (choose s3, gs or azure for a bucket)"
    return None


def check_s3_endpoint_url(value):
    """An S3-compatible store (Cloudflare R2, MinIO, Backblaze B2) is reached at its own endpoint."""
    if not value:
        return None  # Amazon S3 itself
    if ANSWERS["dvc_remote"] != "s3":
        return "is the endpoint of an S3-compatible store, used with dvc_remote=s3 (R2, MinIO and B2 speak S3): choose s3 or leave it empty"
    if CONTROL.search(value) or " " in value:
        return "must not contain spaces or control characters"
    url = urllib.parse.urlsplit(value)
    try:
        url.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        return "has a port that is not a number from 0 to 65535"
    if url.scheme not in ("http", "https") or not url.hostname:
        return "must be an http(s) URL such as https://<account id>.r2.cloudflarestorage.com or http://127.0.0.1:9000"
    if url.username or url.password:
        return "must not hold credentials: give them as AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (docs/storage.md)"
    if not re.fullmatch(r"(?:[A-Za-z0-9-]+\.)*[A-Za-z0-9-]+(?::[0-9]+)?|\[[0-9A-Fa-f:.]+\](?::[0-9]+)?", url.netloc):
        return "must name its host by a DNS name or an IP address (letters, digits, dots and dashes), with an optional port"
    if url.path.strip("/") or url.query or url.fragment:
        # R2's dashboard shows the endpoint with the bucket appended: a common paste.
        return (f"is the server alone ({url.scheme}://{url.netloc}), without a bucket or path: "
                "the bucket goes in dvc_remote_url (s3://<bucket>/<path>)")
    return None


def check_tracking_uri(value):
    if CONTROL.search(value) or " " in value:
        return "must not contain spaces or control characters"
    scheme = value.split(":", 1)[0] if ":" in value else ""
    if scheme not in {"sqlite", "http", "https", "databricks", "file", "postgresql", "mysql"}:
        return "must be a URI such as sqlite:///mlflow.db, http://127.0.0.1:5000 or databricks"
    return None


def check_positive_number(value):
    # Plain decimals only: YAML would read "1e3" as a string.
    if not re.fullmatch(r"[0-9]+(\.[0-9]+)?", value):
        return "must be a number of US dollars, e.g. 20 or 7.5"
    if not 0 < float(value) < 1e6:
        return "must be greater than 0"
    return None


def check_choice(field, choices):
    if ANSWERS[field] not in choices:
        return f"must be one of: {', '.join(choices)}"
    return None


CHECKS = {
    "project_name": lambda v: check_text("project_name", 100),
    "project_slug": check_slug,
    "package_name": check_package,
    "description": lambda v: check_text("description", 300),
    "author": lambda v: check_text("author", 100),
    "github_repository": check_repository,
    "base_model": check_base_model,
    "finetune_method": lambda v: check_choice("finetune_method", ["qlora", "lora", "dora"]),
    "clouds": check_clouds,
    "checkpoint_store": lambda v: check_choice("checkpoint_store", ["s3", "gcs", "r2", "azure"]),
    "checkpoint_bucket": check_bucket,
    "dvc_remote": lambda v: check_choice("dvc_remote", ["local", "s3", "gs", "azure"]),
    "dvc_remote_url": check_dvc_remote_url,
    "s3_endpoint_url": check_s3_endpoint_url,
    "mlflow_tracking_uri": check_tracking_uri,
    "gpu_runner": lambda v: check_choice("gpu_runner", ["skypilot", "self-hosted", "both"]),
    "max_run_cost_usd": check_positive_number,
    "python_version": lambda v: check_choice("python_version", ["3.10", "3.11", "3.12", "3.13"]),
    "license": lambda v: check_choice("license", ["MIT", "Apache-2.0", "BSD-3-Clause", "Proprietary"]),
}


def main():
    for field, check in CHECKS.items():
        value = ANSWERS.get(field)
        problem = "must be text" if not isinstance(value, str) else check(value)
        if problem:
            print(f"error: {field}: {problem} (got {value!r})", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
