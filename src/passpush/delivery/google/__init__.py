"""Google Wallet delivery: the gateway (tokens, request turns), messages on pass objects and
on whole classes, the deliverer."""
