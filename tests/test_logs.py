"""The quiet console: libraries' INFO lines go to <workdir>/log.txt only; speechfuse's and warnings show."""

from __future__ import annotations

import logging as py_logging
import os
import re

from absl import logging

import speechfuse
from speechfuse import logs


def _record(pathname: str, level: int, message: str) -> py_logging.LogRecord:
  return py_logging.LogRecord("absl", level, pathname, 1, message, (), None)


def test_console_keeps_own_lines_and_warnings_and_the_file_keeps_everything(tmp_path):
  path = logs.setup(tmp_path)
  try:
    console = logging.get_absl_handler()
    own = os.path.join(os.path.dirname(speechfuse.__file__), "train", "loop.py")
    library = "/site-packages/orbax/checkpoint/checkpoint_manager.py"
    passes = lambda record: all(f.filter(record) for f in console.filters)
    assert passes(_record(own, py_logging.INFO, "step 100/1000 | loss 1.2"))
    assert not passes(_record(library, py_logging.INFO, "CheckpointManager created"))
    assert passes(_record(library, py_logging.WARNING, "a real problem"))
    line = console.format(_record(own, py_logging.INFO, "step 100/1000 | loss 1.2"))
    assert re.fullmatch(r"\d\d:\d\d:\d\d step 100/1000 \| loss 1.2", line), line  # no thread id, no path
    assert re.fullmatch(r"\d\d:\d\d:\d\d W checkpoint_manager.py:1\] a real problem",
                        console.format(_record(library, py_logging.WARNING, "a real problem")))
    py_logging.getLogger("absl").info("written to the file too")
    for handler in py_logging.getLogger().handlers:
      handler.flush()
    assert path == os.path.join(tmp_path, logs.LOG_FILE) and "written to the file too" in open(path).read()
    logs.setup(tmp_path, show_libraries=True)  # --verbosity: the console shows every line
    assert passes(_record(library, py_logging.INFO, "CheckpointManager created"))
    assert "checkpoint_manager.py:1]" in console.format(_record(library, py_logging.INFO, "created"))
  finally:
    for handler in list(py_logging.getLogger().handlers):
      if getattr(handler, "_speechfuse", False):
        py_logging.getLogger().removeHandler(handler)
        handler.close()
