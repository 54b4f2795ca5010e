"""Apple Wallet delivery: the aioapns fix, the connection pool, the APNs gateway, the deliverer."""
