"""A job file for the CLI tests: word counts per 10 s window, parameters via build(params)."""

import json

import millstream as ms


class Results(ms.connectors.Sink):
    """Appends JSON lines to a file (the CLI test reads them back)."""

    def __init__(self, path):
        self.path = path

    def open(self, step):
        path = self.path

        class W(ms.connectors.SinkWriter):
            def write(self, records, times):
                with open(path, "a") as f:
                    for r in records:
                        f.write(json.dumps(r) + "\n")
        return W()

    def describe(self):
        return "results"


def build(params):
    words = params.get("words", "a b a c b a").split()
    events = [{"word": w, "ts": i * params.get("spacing", 1000)} for i, w in enumerate(words)]
    flow = ms.Flow("wordcount")
    (flow.source(ms.connectors.memory.read(events), watermark=ms.WatermarkStrategy.monotonous(timestamp="ts"))
         .key_by("word").window(ms.windows.tumbling(10_000)).aggregate(n=ms.agg.count())
         .sink(Results(params["out"])))
    return flow
