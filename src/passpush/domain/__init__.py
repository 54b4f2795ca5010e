"""The rules of passpush: targets, content, states, errors, the clock and pass update tags.
Plain Python, no I/O."""
