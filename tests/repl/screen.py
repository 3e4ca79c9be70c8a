"""A small terminal screen for the pty tests: what a person at the terminal sees.

prompt_toolkit redraws the input line by writing only the cells that changed since its last
render, so the bytes it writes depend on how many renders happened, which depends on timing
(it renders early when the machine is busy: Application.max_render_postpone_time). "info
registers" after a Tab is one run of bytes if the completion lands before the first render,
and "info regi", a cursor move and "sters" if not. The tests therefore look at the screen
these bytes draw, which is the same either way.

Only what prompt_toolkit's Vt100_Output writes is understood: printable text, CR, LF, BS,
Tab, BEL, cursor moves (CSI A B C D H), erase (CSI J, CSI K), attributes and modes (CSI m, CSI ?
h/l, cursor shape CSI SP q), and OSC titles. Anything else raises, so a sequence this does
not know can make a test fail but never pass by being drawn wrongly.
"""

from __future__ import annotations

import re

_CSI = re.compile(r"\x1b\[([0-9;?]*)( ?)([@-~])")
_OSC = re.compile(r"\x1b\][^\x07\x1b]*(\x07|\x1b\\)")


class Screen:
    def __init__(self, rows: int, columns: int):
        self.rows, self.columns = rows, columns
        self.lines = [[" "] * columns for _ in range(rows)]
        self.y = self.x = 0
        self.autowrap = True
        self._pending = ""

    # pexpect's logfile_read interface: everything the child writes comes through here.
    def write(self, text: str) -> None:
        self._pending += text
        self._consume()

    def flush(self) -> None:
        pass

    def line(self, y: int | None = None) -> str:
        """Row y (default: the cursor's row) as drawn, without trailing blanks."""
        return "".join(self.lines[self.y if y is None else y]).rstrip()

    def tail(self, n: int) -> list[str]:
        """The n rows ending at the cursor's row."""
        return [self.line(y) for y in range(max(0, self.y - n + 1), self.y + 1)]

    def text(self) -> str:
        return "\n".join(self.line(y) for y in range(self.rows)).rstrip()

    def _consume(self) -> None:
        s, i = self._pending, 0
        while i < len(s):
            ch = s[i]
            if ch == "\x1b":
                if i + 1 == len(s) or (s[i + 1] in "[]" and not _complete(s, i)):
                    break                                 # the rest has not arrived yet
                m = _CSI.match(s, i) or _OSC.match(s, i)
                if m is None:
                    raise ValueError("the test screen does not know the escape sequence "
                                     f"{s[i:i + 12]!r}")
                if m.re is _CSI:
                    self._csi(m.group(1), m.group(2), m.group(3))
                i = m.end()
                continue
            self._char(ch)
            i += 1
        self._pending = s[i:]

    def _char(self, ch: str) -> None:
        if ch == "\r":
            self.x = 0
        elif ch == "\n":
            self._down()
        elif ch == "\b":
            self.x = max(0, self.x - 1)
        elif ch == "\t":
            self.x = min(self.columns - 1, (self.x // 8 + 1) * 8)
        elif ch == "\a":
            pass
        elif ch < " " or ch == "\x7f":
            raise ValueError(f"the test screen does not know the control character {ch!r}")
        else:
            if self.x >= self.columns:
                if not self.autowrap:
                    self.x = self.columns - 1
                else:
                    self.x = 0
                    self._down()
            self.lines[self.y][self.x] = ch
            self.x += 1

    def _down(self) -> None:
        if self.y == self.rows - 1:
            self.lines.pop(0)
            self.lines.append([" "] * self.columns)
        else:
            self.y += 1

    def _csi(self, params: str, space: str, final: str) -> None:
        private = params.startswith("?")
        digits = params.lstrip("?")
        nums = [int(p) if p else 0 for p in digits.split(";")] if digits else []
        n = max(1, nums[0]) if nums else 1
        if space:
            if final != "q":
                raise ValueError(f"the test screen does not know CSI {params} SP {final}")
        elif private:
            if final not in "hl":
                raise ValueError(f"the test screen does not know CSI {params}{final}")
            if 7 in nums:
                self.autowrap = final == "h"
        elif final == "A":
            self.y = max(0, self.y - n)
        elif final == "B":
            self.y = min(self.rows - 1, self.y + n)
        elif final == "C":
            self.x = min(self.columns - 1, self.x + n)
        elif final == "D":
            self.x = max(0, min(self.x, self.columns - 1) - n)
        elif final == "H":
            row, col = (nums + [1, 1])[:2]
            self.y, self.x = min(self.rows, max(1, row)) - 1, min(self.columns, max(1, col)) - 1
        elif final == "J":
            mode = nums[0] if nums else 0
            if mode == 0:
                self._erase_line_from(self.x)
                for y in range(self.y + 1, self.rows):
                    self.lines[y] = [" "] * self.columns
            elif mode == 2:
                self.lines = [[" "] * self.columns for _ in range(self.rows)]
            else:
                raise ValueError(f"the test screen does not know CSI {mode}J")
        elif final == "K":
            if nums and nums[0] != 0:
                raise ValueError(f"the test screen does not know CSI {nums[0]}K")
            self._erase_line_from(self.x)
        elif final == "m":
            pass                                          # attributes: the tests read text
        else:
            raise ValueError(f"the test screen does not know CSI {params}{final}")

    def _erase_line_from(self, x: int) -> None:
        row = self.lines[self.y]
        row[min(x, self.columns):] = [" "] * (self.columns - min(x, self.columns))


def _complete(s: str, i: int) -> bool:
    """Whether the escape sequence starting at s[i] has all its bytes."""
    if s[i + 1] == "[":
        return any("@" <= c <= "~" for c in s[i + 2:])
    return "\x07" in s[i + 2:] or "\x1b\\" in s[i + 2:]
