"""Write the credential files SkyPilot reads, from secrets in the environment (the train job).

    python scripts/ci/cloud_credentials.py

For clouds that have no OIDC login action: each variable that is set becomes the file
SkyPilot looks for, readable by this user only (0600). Unset variables are skipped, so the
same step works with a central SkyPilot API server (which holds the credentials itself),
OIDC (AWS, GCP, Azure: actions earlier in the job) or plain AWS keys (boto3 reads
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY from the environment; nothing to write).

    LAMBDA_API_KEY   -> ~/.lambda_cloud/lambda_keys      (api_key = ...)
    RUNPOD_API_KEY   -> ~/.runpod/config.toml            ([default] api_key = "...")
    VAST_API_KEY     -> ~/.config/vastai/vast_api_key
    KUBECONFIG_DATA  -> ~/.kube/config                   (the whole kubeconfig)

Values are never printed. An API key with whitespace or quotes in it is refused: it would
break out of the line it is written to.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

API_KEY = re.compile(r"[A-Za-z0-9_.:+/=-]+")
FILES = {
    "LAMBDA_API_KEY": (".lambda_cloud/lambda_keys", "api_key = {}\n"),
    "RUNPOD_API_KEY": (".runpod/config.toml", '[default]\napi_key = "{}"\n'),
    "VAST_API_KEY": (".config/vastai/vast_api_key", "{}\n"),
}


def write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as out:
        out.write(text)
    os.chmod(path, 0o600)


def main() -> int:
    home = Path(os.environ.get("HOME") or Path.home())
    written = []
    for variable, (relative, template) in FILES.items():
        value = os.environ.get(variable, "").strip()
        if not value:
            continue
        if not API_KEY.fullmatch(value):
            print(f"error: {variable} has characters an API key does not (whitespace, quotes)", file=sys.stderr)
            return 2
        write_private(home / relative, template.format(value))
        written.append(f"{variable} -> ~/{relative}")
    kubeconfig = os.environ.get("KUBECONFIG_DATA", "")
    if kubeconfig.strip():
        write_private(home / ".kube/config", kubeconfig if kubeconfig.endswith("\n") else kubeconfig + "\n")
        written.append("KUBECONFIG_DATA -> ~/.kube/config")
    print("credential files: " + (", ".join(written) if written else "none (API server, OIDC or environment keys)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
