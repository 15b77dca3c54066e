import millstream as ms


def risky(record):
    return 10 // record["d"]


flow = ms.Flow("failing")
flow.source(ms.connectors.memory.read([{"d": 1}, {"d": 0}], name="input")).map(risky).sink(
    ms.connectors.memory.write())
