// Parity driver for a header written by `pid-export cpp` (see README.md).
//
// It stands in for an O2Physics task: TrackRow has the O2 accessor names, so the
// generated fillFeatures() and fillFeaturesNoBayes() compile against it exactly as they
// do against an O2 table row. The rows come from Python, the feature vectors go back to
// Python, and tests/test_cpp.py compares them with pid_export.features.encode bit for bit.
//
// Build (the Makefile does this):
//   g++ -std=c++17 -O2 -DPIDEXPORT_HEADER='"/path/pidFeatures.h"'
//       -DPIDEXPORT_NS=pidexport::pid -o driver driver.cpp
// Run:
//   driver ROWS OUT_FULL OUT_NO_BAYES
//
// ROWS is text: the line "pid-export-rows 1", a line with the column names (O2 accessor
// names, as in pid_export.features.RAW_INPUTS, any order, any subset), then one line per
// track with the float32 bit patterns of the columns as 8 hex digits. A column that is
// not in the file reads as NaN, as a missing key does in encode(). Each OUT file gets one
// line per track with kNFeatures words in the same hex form, so no value is rounded on
// the way.

#ifndef PIDEXPORT_HEADER
#error "define PIDEXPORT_HEADER as the quoted path of the generated header"
#endif
#ifndef PIDEXPORT_NS
#error "define PIDEXPORT_NS as the namespace of the generated header (pidexport::<name>)"
#endif

#include PIDEXPORT_HEADER

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

namespace
{
namespace features = PIDEXPORT_NS;

enum Column : std::size_t {
  kPt, kEta, kPhi, kTpcSignal,
  kTpcNSigmaPi, kTpcNSigmaKa, kTpcNSigmaPr, kTpcNSigmaEl,
  kBeta, kTofNSigmaPi, kTofNSigmaKa, kTofNSigmaPr, kTofNSigmaEl,
  kBayesPi, kBayesKa, kBayesPr, kBayesEl,
  kDcaXY, kDcaZ, kHasTPC, kHasTOF,
  kNColumns
};

constexpr std::array<const char*, kNColumns> kColumnNames{{
  "pt", "eta", "phi", "tpcSignal",
  "tpcNSigmaPi", "tpcNSigmaKa", "tpcNSigmaPr", "tpcNSigmaEl",
  "beta", "tofNSigmaPi", "tofNSigmaKa", "tofNSigmaPr", "tofNSigmaEl",
  "bayesPi", "bayesKa", "bayesPr", "bayesEl",
  "dcaXY", "dcaZ", "hasTPC", "hasTOF",
}};

/// A track without the Bayesian PID tables: fillFeaturesNoBayes() must compile with it.
/// The flags are floats rather than O2's bool so that Python can probe odd flag values.
struct TrackRowNoBayes {
  std::array<float, kNColumns> v;

  float pt() const { return v[kPt]; }
  float eta() const { return v[kEta]; }
  float phi() const { return v[kPhi]; }
  float tpcSignal() const { return v[kTpcSignal]; }
  float tpcNSigmaPi() const { return v[kTpcNSigmaPi]; }
  float tpcNSigmaKa() const { return v[kTpcNSigmaKa]; }
  float tpcNSigmaPr() const { return v[kTpcNSigmaPr]; }
  float tpcNSigmaEl() const { return v[kTpcNSigmaEl]; }
  float beta() const { return v[kBeta]; }
  float tofNSigmaPi() const { return v[kTofNSigmaPi]; }
  float tofNSigmaKa() const { return v[kTofNSigmaKa]; }
  float tofNSigmaPr() const { return v[kTofNSigmaPr]; }
  float tofNSigmaEl() const { return v[kTofNSigmaEl]; }
  float dcaXY() const { return v[kDcaXY]; }
  float dcaZ() const { return v[kDcaZ]; }
  float hasTPC() const { return v[kHasTPC]; }
  float hasTOF() const { return v[kHasTOF]; }
};

/// A track joined with the pidBayes tables (percent values, as O2 stores them).
struct TrackRow : TrackRowNoBayes {
  float bayesPi() const { return v[kBayesPi]; }
  float bayesKa() const { return v[kBayesKa]; }
  float bayesPr() const { return v[kBayesPr]; }
  float bayesEl() const { return v[kBayesEl]; }
};

float fromBits(std::uint32_t bits)
{
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

std::uint32_t toBits(float value)
{
  std::uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
}

bool readRows(const char* path, std::vector<TrackRow>& rows)
{
  std::ifstream in(path);
  std::string line;
  if (!std::getline(in, line) || line != "pid-export-rows 1") {
    std::cerr << path << ": first line must be 'pid-export-rows 1'\n";
    return false;
  }
  std::getline(in, line);
  std::istringstream header(line);
  std::vector<std::size_t> columns;
  for (std::string name; header >> name;) {
    std::size_t c = 0;
    while (c < kNColumns && name != kColumnNames[c]) {
      ++c;
    }
    if (c == kNColumns) {
      std::cerr << path << ": unknown column '" << name << "'\n";
      return false;
    }
    columns.push_back(c);
  }
  while (std::getline(in, line)) {
    if (line.empty()) {
      continue;
    }
    TrackRow row;
    row.v.fill(std::numeric_limits<float>::quiet_NaN());
    std::istringstream words(line);
    for (std::size_t c : columns) {
      std::string word;
      if (!(words >> word)) {
        std::cerr << path << ": row " << rows.size() << " has too few words\n";
        return false;
      }
      row.v[c] = fromBits(static_cast<std::uint32_t>(std::stoul(word, nullptr, 16)));
    }
    rows.push_back(row);
  }
  return true;
}

template <typename TFill>
bool writeFeatures(const char* path, const std::vector<TrackRow>& rows, TFill fill)
{
  std::FILE* out = std::fopen(path, "w");
  if (out == nullptr) {
    std::cerr << path << ": cannot open for writing\n";
    return false;
  }
  std::array<float, features::kNFeatures> x{};
  for (const TrackRow& row : rows) {
    fill(row, x);
    for (std::size_t i = 0; i < x.size(); ++i) {
      std::fprintf(out, i + 1 < x.size() ? "%08x " : "%08x\n", static_cast<unsigned>(toBits(x[i])));
    }
  }
  return std::fclose(out) == 0;
}
} // namespace

int main(int argc, char** argv)
{
  if (argc != 4) {
    std::cerr << "usage: " << argv[0] << " ROWS OUT_FULL OUT_NO_BAYES\n";
    return 2;
  }
  std::vector<TrackRow> rows;
  if (!readRows(argv[1], rows)) {
    return 1;
  }
  const bool full = writeFeatures(argv[2], rows, [](const TrackRow& row, auto& x) {
    features::fillFeatures(row, x);
  });
  // Sliced to the base type on purpose: the no-Bayes variant must not need bayes*().
  const bool noBayes = writeFeatures(argv[3], rows, [](const TrackRowNoBayes& row, auto& x) {
    features::fillFeaturesNoBayes(row, x);
  });
  return full && noBayes ? 0 : 1;
}
