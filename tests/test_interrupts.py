"""A Ctrl-C whose KeyboardInterrupt Python drops (it was raised inside a finalizer) still stops
the run: counted by :mod:`pytest_lbbench.interrupts`, acted on between tests, exit code 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

# A finalizer that is running when SIGINT arrives: its KeyboardInterrupt cannot propagate.
DROPPED_IN_DEL = '''
import gc, os, signal, time

class Finalized:
    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler runs here, inside __del__

def press_ctrl_c_inside_a_finalizer():
    obj = Finalized()
    del obj
    gc.collect()
'''


def test_a_press_dropped_in_a_finalizer_is_still_counted() -> None:
    code = DROPPED_IN_DEL + '''
from pytest_lbbench import interrupts
assert interrupts.install()
press_ctrl_c_inside_a_finalizer()
print("went on", interrupts.presses(), flush=True)  # Python dropped the KeyboardInterrupt
try:
    interrupts.raise_if_pressed()
except KeyboardInterrupt:
    print("stopped", flush=True)
'''
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["went", "on", "1", "stopped"], proc.stdout + proc.stderr
    assert "KeyboardInterrupt" in proc.stderr  # Python's "Exception ignored in: ... __del__"


def test_install_leaves_a_foreign_handler_alone_and_uninstall_restores_the_default() -> None:
    code = '''
import signal
from pytest_lbbench import interrupts
mine = lambda signum, frame: None
signal.signal(signal.SIGINT, mine)
assert not interrupts.install() and signal.getsignal(signal.SIGINT) is mine
signal.signal(signal.SIGINT, signal.default_int_handler)
assert interrupts.install() and not interrupts.install()  # the second finds it in place
interrupts.uninstall()
assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
print("ok")
'''
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "ok", proc.stdout + proc.stderr


def test_a_run_whose_ctrl_c_was_dropped_stops_before_the_next_test_and_exits_2(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_dropped=DROPPED_IN_DEL + '''
def test_first():
    press_ctrl_c_inside_a_finalizer()

def test_second():
    pass
''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-v")
    assert result.ret == pytest.ExitCode.INTERRUPTED, result.stdout.str()
    result.stdout.fnmatch_lines(["*test_first PASSED*", "*KeyboardInterrupt*"])
    assert "test_second" not in result.stdout.str()
