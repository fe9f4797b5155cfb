"""vigil operator tool (vigilctl(8))."""
