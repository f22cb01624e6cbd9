"""Stand-ins for what a GitHub Actions run needs and this machine does not have, for running the
baked project's real workflows under act (tests/test_actions.py):

    harness.py      `Act.run`: act with the flags below, and its JSON log read back (ActResult)
    stand_ins/      local actions for the pinned ones: checkout, setup-python, cloud logins, upload-artifact
    github_api.py   GitHub's issue-comment endpoints on 127.0.0.1 (create, list with pages, update)
    events.py       webhook payloads: pull_request (from a branch or a fork), push
    sky.py          `sky jobs launch|cancel` run on this machine, installed as a stand-in `skypilot` wheel

Imports: the standard library, PyYAML and pytest only.
"""
