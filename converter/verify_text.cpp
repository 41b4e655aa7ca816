// The built-in verify text: four samples written for this project (so under its own licence), each a
// kind of input a user's model meets: English prose, source code, numbers and tables, and non-English
// prose with non-Latin script. verify tokenizes them with the model's own tokenizer.
#include "converter/verify_text.h"

namespace linearize {

const std::vector<std::string_view>& builtin_verify_texts() {
  static const std::vector<std::string_view> texts{
      // English prose.
      R"(The ferry left the harbour an hour before dawn, while the lamps along the quay were still burning.
Most of the passengers went below to sleep, but a few stayed on deck and watched the town shrink into a
line of grey roofs. The captain, a quiet woman who had worked the crossing for twenty years, said the
weather would turn by noon. Nobody believed her until the wind swung round to the north and the first
drops of rain struck the windows of the bridge. By then the island was already in sight: a dark ridge
with a white lighthouse at one end and a cluster of fishing huts at the other. The children pressed
their faces to the glass and argued about whether the birds circling the cliffs were gulls or
cormorants. Their father, who had grown up on the island, told them that the cormorants were the ones
that flew low over the water and dived without warning, and that the gulls were the ones that would
steal a sandwich from your hand if you were not careful. When the ferry finally tied up at the little
pier, the rain had stopped and the sun came through the clouds in long slanting beams.
)",
      // Source code.
      R"(def moving_average(values, window):
    """Return the mean of each run of `window` consecutive values."""
    if window <= 0:
        raise ValueError(f"window must be positive, got {window}")
    total = sum(values[:window])
    averages = [total / window]
    for i in range(window, len(values)):
        total += values[i] - values[i - window]
        averages.append(total / window)
    return averages


class LruCache:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.items: dict[str, bytes] = {}

    def get(self, key: str) -> bytes | None:
        value = self.items.pop(key, None)
        if value is not None:
            self.items[key] = value  # most recently used goes last
        return value

    def put(self, key: str, value: bytes) -> None:
        self.items.pop(key, None)
        if len(self.items) >= self.capacity:
            del self.items[next(iter(self.items))]
        self.items[key] = value

int main(int argc, char** argv) {
  std::vector<double> xs{1.5, 2.25, -0.75};
  for (std::size_t i = 0; i < xs.size(); ++i) std::printf("%zu: %.3f\n", i, xs[i]);
  return argc > 1 ? std::atoi(argv[1]) : 0;
}
)",
      // Numbers, dates and tables.
      R"(Quarterly report, fiscal year 2025 (all figures in thousands of euros unless stated otherwise)
| quarter | revenue | cost of sales | gross margin | headcount |
|---------|---------|---------------|--------------|-----------|
| Q1      | 12,480  | 7,311         | 41.4%        | 118       |
| Q2      | 13,905  | 8,027         | 42.3%        | 124       |
| Q3      | 11,772  | 6,950         | 41.0%        | 131       |
| Q4      | 15,064  | 8,463         | 43.8%        | 137       |
Total revenue: 53,221; year-on-year growth: +7.9% (2024: 49,325).
Invoice 2025-0417 issued on 17 April 2025, due 2025-05-17, amount 3,450.00 EUR incl. 19% VAT (550.84).
Sensor log 08:00:00 T=21.4 C RH=45% p=1013.2 hPa; 08:15:00 T=21.9 C RH=44% p=1013.0 hPa;
08:30:00 T=22.6 C RH=42% p=1012.7 hPa; 08:45:00 T=23.1 C RH=41% p=1012.5 hPa.
3.14159 26535 89793 23846 26433 83279 50288 41971 69399 37510
2^10 = 1024, 2^16 = 65536, 2^32 = 4294967296, 10! = 3628800, sqrt(2) = 1.41421356.
Phone +49 30 1234 5678, order no. A-77-0093-X, coordinates 52.5200 N, 13.4050 E.
)",
      // Non-English prose (German, French, Russian, Japanese).
      R"(Am Montagmorgen war der Bahnhof voller Menschen, die zur Arbeit fuhren. Eine ältere Frau mit einem
großen Koffer fragte den Schaffner, ob der Zug nach München pünktlich sei. Er lächelte und sagte, dass
es heute wegen Bauarbeiten zwischen Nürnberg und Ingolstadt etwa zwanzig Minuten Verspätung gebe.
Le marché du samedi ouvre à sept heures. Les maraîchers installent leurs étals sous les platanes, et
l'odeur du pain chaud se mêle à celle des fraises. « Deux kilos de tomates, s'il vous plaît », dit un
garçon en tendant un billet froissé.
Вечером над рекой поднялся туман, и огни на другом берегу стали расплывчатыми. Старик сидел на
скамейке и рассказывал внуку о том, как много лет назад здесь ходили пароходы.
駅前の小さな本屋は、朝九時に開きます。店主は毎朝、新しい雑誌を棚に並べてから、コーヒーを一杯飲みます。
)",
  };
  return texts;
}

}  // namespace linearize
