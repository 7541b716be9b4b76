"""Runs the python blocks of one guide in one namespace, as a reader pasting them into one
interpreter would: a JSON line in (``code``, ``save``: names to evaluate after it), a JSON line
out (``ok``, ``out``, ``error``, ``saved``). Started by tests/docs/test_guides.py."""

from __future__ import annotations

import contextlib
import io
import json
import sys
import traceback


def main() -> None:
    protocol = sys.stdout
    namespace: dict[str, object] = {"__name__": "__main__"}
    for line in sys.stdin:
        block = json.loads(line)
        out = io.StringIO()
        reply: dict[str, object] = {"ok": True, "error": None, "saved": {}}
        try:
            with contextlib.redirect_stdout(out):
                exec(compile(block["code"], "<guide block>", "exec"), namespace)
            reply["saved"] = {name: str(eval(expression, namespace))
                              for name, expression in block["save"].items()}
        except BaseException:  # a failing block is reported, never ends the runner
            reply.update(ok=False, error=traceback.format_exc())
        reply["out"] = out.getvalue()
        protocol.write(json.dumps(reply) + "\n")
        protocol.flush()


if __name__ == "__main__":
    main()
