"""Prices per model, in USD per million tokens, and the cost of a call."""

from __future__ import annotations

from collections.abc import Mapping

# (input, output) USD per 1M tokens, list prices at the time of writing: check your provider's
# current prices and pass your own table (or overrides) to `PriceTable`.
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-4": (30.00, 60.00),
    "gpt-3.5-turbo": (0.50, 1.50),
    "o3-mini": (1.10, 4.40),
    "o4-mini": (1.10, 4.40),
}


class PriceTable:
    """Model prices; the longest matching prefix of the model name wins.

    Args:
        prices: model (or prefix) -> (USD per 1M input tokens, USD per 1M output tokens); merged
            over the defaults unless `replace=True`.
        default: the price of a model no entry matches (local models: free).
    """

    def __init__(
        self,
        prices: Mapping[str, tuple[float, float]] | None = None,
        *,
        replace: bool = False,
        default: tuple[float, float] = (0.0, 0.0),
    ) -> None:
        self.prices = dict(prices or {}) if replace else {**DEFAULT_PRICES, **(prices or {})}
        self.default = default

    def price_for(self, model: str) -> tuple[float, float]:
        found = self._entry(model)
        return self.prices[found] if found is not None else self.default

    def priced(self, model: str) -> bool:
        """Whether the table prices `model`: an entry matches it, or the default is not free."""
        return self._entry(model) is not None or self.default != (0.0, 0.0)

    def _entry(self, model: str) -> str | None:
        name = model.split("/")[-1].lower()
        matches = [p for p in self.prices if name.startswith(p.lower())]
        return max(matches, key=len) if matches else None

    def cost(self, model: str, input_tokens: int, output_tokens: int) -> float:
        """USD for a call with these token counts."""
        price_in, price_out = self.price_for(model)
        return round((input_tokens * price_in + output_tokens * price_out) / 1_000_000, 8)
