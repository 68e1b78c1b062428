"""Reading a `/metrics` exposition in tests: parsed once, with prometheus_client's own parser."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


class Scrape:
    """One parsed exposition: families by name, samples by name."""

    def __init__(self, text: str) -> None:
        self.text = text
        # Family name -> (type, samples). `_created` gauges would be families of their own.
        self.families: dict[str, tuple[str, list[Sample]]] = {
            f.name: (f.type, f.samples) for f in text_string_to_metric_families(text)
        }
        self._by_name: dict[str, list[Sample]] = {}
        for _, samples in self.families.values():
            for sample in samples:
                self._by_name.setdefault(sample.name, []).append(sample)

    def samples(self, name: str) -> Iterator[Sample]:
        yield from self._by_name.get(name, ())

    def value(self, name: str, **labels: str) -> float | None:
        """The value of the sample `name` whose labels are exactly `labels`; None if absent."""
        for sample in self.samples(name):
            if sample.labels == labels:
                return float(sample.value)
        return None

    def total(self, name: str, **labels: str) -> float:
        """The sum over every sample `name` whose labels include `labels`."""
        return sum(
            float(s.value)
            for s in self.samples(name)
            if all(s.labels.get(k) == v for k, v in labels.items())
        )

    def label_values(self, name: str, label: str) -> set[str]:
        return {s.labels[label] for s in self.samples(name) if label in s.labels}

    def sample_names(self) -> set[str]:
        return set(self._by_name)
