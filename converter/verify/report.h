// A verification's report: one row per figure a check measured, and its three renderings (the text table
// verify prints, JSON for verify.json and --json, JUnit XML for CI systems' test views).
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace linearize {

struct CheckResult {
  std::string level;       // "L0" .. "L4", "L6"
  std::string name;
  double value = 0;
  std::string comparison;  // "<=", ">=", "==" or "" for a reported figure
  double tolerance = 0;
  bool enforced = true;    // false: reported only (an L4 figure without a threshold)
  bool passed = true;
  std::string detail;      // what failed, by name (the worst layer, the first differing tensor)
};

struct VerifyReport {
  std::vector<CheckResult> checks;
  nlohmann::ordered_json layers = nlohmann::ordered_json::array();  // L4 per-layer relative errors
  // L1 per converted layer: the fp64 form differences, and how far the compute-dtype chunked form is from
  // the fp64 result (where in depth rounding grows).
  nlohmann::ordered_json layer_forms = nlohmann::ordered_json::array();
  bool passed() const;
  nlohmann::ordered_json to_json() const;
  std::string table() const;  // one row per check: level, check, value, tolerance, PASS/FAIL
  // JUnit XML: one testcase per check (a FAIL carries value and tolerance), for CI systems' test views.
  std::string junit(const std::string& suite) const;
};

// A figure as the report prints it: 6 significant digits, scientific below 1e-3 and from 1e5.
std::string format_value(double v);

}  // namespace linearize
