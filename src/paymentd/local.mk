# vigil-paymentd (filled in with the daemon).
