import millstream as ms

flow = ms.Flow("plain")
flow.source(ms.connectors.memory.read(range(10))).filter(lambda x: x % 2).sink(ms.connectors.memory.write())

if __name__ == "__main__":
    raise SystemExit("the CLI must not run the __main__ block")
