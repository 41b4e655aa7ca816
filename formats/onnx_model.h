// ONNX models as files: a graph built node by node with ONNX's own protobuf classes (opset and operator
// names are the caller's), initializers whose bytes stay where they are until the file is written (so a
// model's weights are never copied into memory a second time), the file written atomically with its
// weights inline or in external data (model.onnx.data), and ONNX's checker and shape inference run on a
// written file. Knows no model: converter/onnx_export.cpp says what the graph computes.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <variant>
#include <vector>

namespace onnx {
class GraphProto;
}

namespace linearize::onnx_model {

// TensorProto element types used here (onnx.proto's codes).
enum class ElementType : std::int32_t { f32 = 1, i64 = 7, boolean = 9, f16 = 10, f64 = 11, bf16 = 16 };
std::size_t element_size(ElementType type);

// One dimension of a graph input or output: a fixed size, or a named dynamic one ("batch").
struct Dim {
  std::int64_t size = -1;
  std::string name;
  Dim(std::int64_t fixed) : size(fixed) {}  // NOLINT: sizes read naturally in shape lists
  Dim(const char* symbol) : name(symbol) {}  // NOLINT
  Dim(std::string symbol) : name(std::move(symbol)) {}  // NOLINT
};

class Graph;
// A node attribute's value: int, float, string, ints, floats, or a subgraph (Scan's body).
using AttributeValue = std::variant<std::int64_t, float, std::string, std::vector<std::int64_t>, std::vector<float>,
                                    std::shared_ptr<const Graph>>;
struct Attribute {
  std::string name;
  AttributeValue value;
};

// A graph's nodes, inputs and outputs. Value names are strings; node() makes fresh ones, unique across the
// model (subgraphs included: ONNX forbids a subgraph to shadow an outer name).
class Graph {
 public:
  ~Graph();
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;

  void input(const std::string& name, ElementType type, const std::vector<Dim>& shape);
  void output(const std::string& name, ElementType type, const std::vector<Dim>& shape);
  // A node of `op` (ONNX domain) and its `outputs` fresh output names.
  std::vector<std::string> node(const std::string& op, const std::vector<std::string>& inputs, int outputs,
                                const std::vector<Attribute>& attributes = {});
  std::string node(const std::string& op, const std::vector<std::string>& inputs,
                   const std::vector<Attribute>& attributes = {}) {
    return node(op, inputs, 1, attributes).front();
  }
  // Identity into a given name (graph outputs, Scan body outputs).
  void rename(const std::string& value, const std::string& name);
  // A graph for a node attribute (Scan or Loop body) sharing this graph's name counter; its inputs and outputs
  // are declared like the main graph's; it may read every value of the enclosing graphs.
  std::shared_ptr<Graph> subgraph(const std::string& name) const;
  std::string fresh_name(const std::string& hint) const;
  std::size_t node_count() const;
  const onnx::GraphProto& proto() const;  // for Model and attributes

 private:
  friend class Model;
  struct Impl;
  explicit Graph(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

struct SaveOptions {
  // Weights go to <model>.data when the initializers hold more than this many bytes (protobuf caps a file at
  // 2 GiB), else inline.
  std::uint64_t external_data_above = 2ull << 30;
  std::uint64_t alignment = 4096;  // external data offsets (page-aligned, so runtimes can mmap them)
  // Smaller initializers stay inline even then: shape vectors and scalars, which shape inference reads (as
  // onnx.external_data_helper's size_threshold).
  std::uint64_t inline_below = 1024;
};

struct SaveResult {
  std::uint64_t graph_bytes = 0;          // model.onnx
  std::uint64_t external_data_bytes = 0;  // model.onnx.data, 0 when inline
  std::int64_t initializers = 0;
  std::filesystem::path external_data;    // empty when inline
};

class Model {
 public:
  Model(std::int64_t opset, const std::string& producer_version);
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  Graph& graph();
  // An initializer whose bytes are read from `data` when the model is saved: the caller keeps them alive
  // until then (a view of a memory-mapped checkpoint), or `keep_alive` owns them (held as long as the Model).
  // `written` is called once they are copied out (a mapped checkpoint drops the tensor's pages: one tensor
  // resident at a time).
  void initializer(const std::string& name, ElementType type, const std::vector<std::int64_t>& shape,
                   const void* data, std::shared_ptr<const void> keep_alive = nullptr,
                   std::function<void()> written = nullptr);
  // Small constants owned by the model.
  std::string constant(const std::string& name, const std::vector<float>& values, const std::vector<std::int64_t>& shape);
  std::string constant(const std::string& name, const std::vector<std::int64_t>& values,
                       const std::vector<std::int64_t>& shape);
  bool has_initializer(const std::string& name) const;
  void metadata(const std::string& key, const std::string& value);

  // Writes `path` (and `path`.data) through temporary names, renamed into place only when both are complete
  // (the data first: the graph names it); an inline save removes a `path`.data left by an earlier one.
  SaveResult save(const std::filesystem::path& path, const SaveOptions& options = {}) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// One finding of check_file (empty message: passed).
struct CheckResult {
  std::string checker;          // onnx::checker::check_model(full_check) error, empty when valid
  std::string shape_inference;  // strict shape inference error, empty when it ran cleanly
  std::int64_t opset = 0;
  std::int64_t nodes = 0;
  bool ok() const { return checker.empty() && shape_inference.empty(); }
};
CheckResult check_file(const std::filesystem::path& path);

// What a written file holds, read back without its external data: each initializer's name, type, shape and
// where its bytes are (inline or an offset into the external data file).
struct InitializerInfo {
  std::string name;
  ElementType type;
  std::vector<std::int64_t> shape;
  std::string location;  // the external data file, empty when inline
  std::uint64_t offset = 0, length = 0;
  std::string inline_bytes;  // raw bytes when inline
};
struct FileInfo {
  std::int64_t opset = 0;
  std::vector<InitializerInfo> initializers;
  std::vector<std::string> inputs, outputs;
  std::vector<std::pair<std::string, std::string>> metadata;
};
// Throws InputError naming the file on anything unreadable.
FileInfo read_file_info(const std::filesystem::path& path);

}  // namespace linearize::onnx_model
