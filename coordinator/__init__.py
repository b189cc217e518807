"""The coordinator: Flower ServerApp whose main loop is fedcore's round driver, and its side of each privacy mode."""
