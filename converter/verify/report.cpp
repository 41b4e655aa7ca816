#include "converter/verify/report.h"

#include <algorithm>
#include <cmath>
#include <iomanip>
#include <sstream>

#include "formats/markup.h"

namespace linearize {

std::string format_value(double v) {
  std::ostringstream s;
  if (v != 0 && (std::abs(v) < 1e-3 || std::abs(v) >= 1e5)) s << std::scientific << std::setprecision(3) << v;
  else s << std::setprecision(6) << v;
  return s.str();
}

bool VerifyReport::passed() const {
  return std::all_of(checks.begin(), checks.end(), [](const CheckResult& c) { return c.passed; });
}

nlohmann::ordered_json VerifyReport::to_json() const {
  nlohmann::ordered_json j;
  j["passed"] = passed();
  j["checks"] = nlohmann::ordered_json::array();
  for (const auto& c : checks) {
    nlohmann::ordered_json row{{"level", c.level}, {"check", c.name}, {"value", c.value}};
    if (c.enforced) {
      row["comparison"] = c.comparison;
      row["tolerance"] = c.tolerance;
    }
    row["result"] = c.enforced ? (c.passed ? "PASS" : "FAIL") : "INFO";
    if (!c.detail.empty()) row["detail"] = c.detail;
    j["checks"].push_back(row);
  }
  j["layers"] = layers;
  j["layer_forms"] = layer_forms;
  return j;
}

std::string VerifyReport::table() const {
  std::ostringstream out;
  std::size_t width = 5;
  for (const auto& c : checks) width = std::max(width, c.name.size());
  out << "level  " << std::left << std::setw(static_cast<int>(width)) << "check" << "  " << std::setw(12) << "value"
      << "  " << std::setw(14) << "tolerance" << "  result\n";
  for (const auto& c : checks) {
    const std::string tol = c.enforced ? c.comparison + " " + format_value(c.tolerance) : "-";
    out << std::left << std::setw(7) << c.level << std::setw(static_cast<int>(width)) << c.name << "  " << std::setw(12)
        << format_value(c.value) << "  " << std::setw(14) << tol << "  "
        << (c.enforced ? (c.passed ? "PASS" : "FAIL") : "info") << (c.detail.empty() ? "" : "  (" + c.detail + ")") << '\n';
  }
  out << (passed() ? "verify: PASS" : "verify: FAIL") << '\n';
  return out.str();
}

std::string VerifyReport::junit(const std::string& suite) const {
  std::size_t failures = 0;
  for (const auto& c : checks) failures += c.enforced && !c.passed;
  std::ostringstream out;
  out << "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n<testsuite name=\"" << escape_markup(suite) << "\" tests=\""
      << checks.size() << "\" failures=\"" << failures << "\">\n";
  for (const auto& c : checks) {
    out << "  <testcase classname=\"verify." << escape_markup(c.level) << "\" name=\"" << escape_markup(c.name) << "\">";
    const std::string value = "value " + format_value(c.value) +
                              (c.enforced ? ", tolerance " + c.comparison + " " + format_value(c.tolerance) : " (reported, not enforced)") +
                              (c.detail.empty() ? "" : "; " + c.detail);
    if (c.enforced && !c.passed) out << "\n    <failure message=\"" << escape_markup(value) << "\" type=\"" << escape_markup(c.level) << "\"/>\n  ";
    else out << "<system-out>" << escape_markup(value) << "</system-out>";
    out << "</testcase>\n";
  }
  out << "</testsuite>\n</testsuites>\n";
  return out.str();
}

}  // namespace linearize
