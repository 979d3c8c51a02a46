"""KTAP v1's rules, written down from Documentation/dev-tools/ktap.rst, as a check of a document.

- It begins with a version line ("KTAP version 1"); each nested block begins with one too.
- A plan "1..N" follows the version line and announces N tests at that level.
- A result line is `<result> <number> [<description>][ # [<directive>] [<diagnostic data>]]`: result
  "ok" or "not ok", numbers start at 1 and grow by 1 within a level, the description has no '#'.
- Directives: SKIP, TODO, XFAIL, TIMEOUT, ERROR; TIMEOUT and ERROR go with "not ok".
- Nested: every line of a subtest is indented one level more, a level being two spaces, from its
  version line until the parent's result line; a parent fails when any of its subtests fails.
- Diagnostic lines are "# ...": kvmtest's own rule on top: a failure without a TIMEOUT or ERROR
  reason has its reason in the diagnostic line directly before its `not ok` line.
"""

import re

RESULT = re.compile(r"^(?P<ok>ok|not ok) (?P<num>\d+)(?: (?P<desc>[^#]*?))?(?: # (?P<rest>.*))?$")
DIRECTIVES = ("SKIP", "TODO", "XFAIL", "TIMEOUT", "ERROR")
LEVEL = "  "


def ktap_problems(text: str) -> list[str]:
    lines = text.splitlines()
    problems = []
    if not lines or lines[0] != "KTAP version 1":
        return ["the first line is not 'KTAP version 1'"]
    # one entry per open level: [indent, plan, results so far, any subtest failed]
    stack = [[0, None, 0, False]]
    expect_plan = True
    for n, line in enumerate(lines[1:], start=2):
        body = line.lstrip(" ")
        indent = len(line) - len(body)
        top = stack[-1]
        if body == "KTAP version 1":
            if indent != top[0] + len(LEVEL):
                problems.append(f"line {n}: nested version line indented {indent}, expected {top[0] + len(LEVEL)}")
            stack.append([indent, None, 0, False])
            expect_plan = True
            continue
        if body.startswith("#"):
            continue
        m = re.fullmatch(r"1\.\.(\d+)", body)
        if m:
            if not expect_plan or indent != top[0]:
                problems.append(f"line {n}: plan not right after its version line")
            top[1] = int(m.group(1))
            expect_plan = False
            continue
        m = RESULT.match(body)
        if not m:
            problems.append(f"line {n}: neither version, plan, result nor diagnostic: {line!r}")
            continue
        if indent == top[0] - len(LEVEL) and len(stack) > 1:  # the parent's result closes the block
            closed = stack.pop()
            if closed[1] != closed[2]:
                problems.append(f"line {n}: the block's plan announced {closed[1]} tests, it has {closed[2]}")
            if closed[3] and m.group("ok") == "ok":
                problems.append(f"line {n}: parent 'ok' although a subtest failed")
            top = stack[-1]
        elif indent != top[0]:
            problems.append(f"line {n}: result indented {indent}, its level is at {top[0]}")
        top[2] += 1
        if int(m.group("num")) != top[2]:
            problems.append(f"line {n}: test number {m.group('num')}, expected {top[2]}")
        rest = m.group("rest") or ""
        word = rest.split(" ", 1)[0]
        if word in ("TIMEOUT", "ERROR") and m.group("ok") == "ok":
            problems.append(f"line {n}: {word} with 'ok'")
        if m.group("ok") == "not ok":
            top[3] = True
            previous = lines[n - 2].strip()
            if word not in ("TIMEOUT", "ERROR") and not (previous.startswith("# ") and len(previous) > 2):
                problems.append(f"line {n}: 'not ok' without its reason in a diagnostic line before it")
    if len(stack) != 1:
        problems.append("the output ends inside a subtest")
    elif stack[0][1] != stack[0][2]:
        problems.append(f"the plan announced {stack[0][1]} tests, the output has {stack[0][2]}")
    return problems
