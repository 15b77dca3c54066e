import millstream as ms

flow = ms.Flow("broken")
flow.source(ms.connectors.memory.read(range(3))).key_by(lambda x: x).window(ms.windows.tumbling(1000))
