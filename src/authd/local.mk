# vigil-authd (filled in with the daemon).
