"""The rules of passpush: targets, content, states and errors. Plain Python, no I/O."""
