"""The course's checked exercises, one module per lesson (``lesson01.py`` for 01_lm_math, ...).

Every module here is imported by `lmcourse.checker` on first use and calls `checker.register` for each
exercise. A new lesson adds a module; nothing else needs editing.
"""
