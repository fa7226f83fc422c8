"""The mutation exercise behind issue 27's closing note: each mutation of a critical
behaviour applied alone, the tests that guard it run, the file put back. "killed": a test
failed, as it should; "SURVIVED": nothing noticed the break.

    .venv/bin/python scripts/mutations.py      # one table row a mutation

Run it on a clean working tree: each file is rewritten while its tests run.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ABUSE = "tests/test_gateway_abuse.py::"

#: (behaviour, file, the line as it is, the line broken, the tests that guard it)
MUTATIONS = [
    ("journal: fsync before acknowledging", "services/user/journal.py",
     "                os.fsync(descriptor)\n", "                pass\n",
     ["tests/test_user_journal.py"]),
    ("journal: CRC of a complete line", "services/user/journal.py",
     "        if len(checksum) != 8 or int(checksum, 16) != zlib.crc32(body):",
     "        if len(checksum) != 8:", ["tests/test_user_journal.py"]),
    ("retrieval hides other people's uploads", "services/user/privacy.py",
     "        return [photo for photo, owners in self._owners.items() if user not in owners]",
     "        return []", ["tests/test_user_privacy.py"]),
    ("a repeated request id answers once", "services/user/privacy.py",
     "        return self._answers.get((user, request_id)) if request_id else None",
     "        return None", ["tests/test_user_privacy.py"]),
    ("state changes from another origin refused", "services/gateway/guards.py",
     "        if refused is None:", "        if True:",
     [ABUSE + "test_state_changes_from_other_sites_and_hosts_are_refused"]),
    ("a slow body cut off with 408", "services/gateway/http.py",
     "                raise BodyLimit.TooSlowError from None",
     "                return await receive()",
     [ABUSE + "test_a_slow_body_gets_408_and_slow_headers_lose_the_connection"]),
    ("pixels-a-byte budget", "shared/images.py",
     "    if pixels > max(FREE_PIXELS, PIXELS_PER_BYTE * len(data)):", "    if False:",
     ["tests/test_vision.py"]),
    ("session expiry (the signed cookie's age alone)", "services/gateway/accounts.py",
     "session = self._signer.unsign(cookie, max_age=self.session_seconds).decode()",
     "session = self._signer.unsign(cookie).decode()",
     ["tests/test_accounts.py", "tests/test_gateway_abuse.py"]),
    ("a throttled name is refused before its password is tried", "services/gateway/me.py",
     '        await gateway.limits.check("sign-in-name", name, count=False)', "        pass",
     [ABUSE + "test_repeated_failed_sign_ins_are_throttled_even_with_the_right_password"]),
    ("one writer: the state folder's lock", "services/user/journal.py",
     "            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)", "            pass",
     ["tests/test_operations.py"]),
    ("a streamed upload cut at the limit", "services/gateway/http.py",
     "                if received > self.limit:", "                if False:",
     ["tests/test_gateway.py::test_a_streamed_body_is_cut_off_at_the_limit"]),
]


def main() -> None:
    print("| behaviour | file | verdict | pytest |\n|---|---|---|---|")
    for name, path, line, broken, tests in MUTATIONS:
        file = REPO / path
        original = file.read_text()
        if original.count(line) != 1:
            print(f"| {name} | `{path}` | not applied: the line changed | |")
            continue
        file.write_text(original.replace(line, broken))
        try:
            result = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
                cwd=REPO, capture_output=True, text=True, timeout=900)
        finally:
            file.write_text(original)
        verdict = "killed" if result.returncode != 0 else "SURVIVED"
        summary = (result.stdout.strip().splitlines() or [""])[-1]
        print(f"| {name} | `{path}` | {verdict} | {summary} |", flush=True)


if __name__ == "__main__":
    main()
