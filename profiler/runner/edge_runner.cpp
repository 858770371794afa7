// edge_runner: the native runner of an edge artifact (plan.json, model.pte, checks.safetensors) on
// ExecuTorch's C++ Module API. It executes the plan as export/routed.py's `drive` does (graph mode: one
// call of "forward"), times it per budget level and per branch-forcing check, compares every check's
// outputs with the eager outputs bundled beside the program, and writes the same JSON-line records as
// `python -m device.measure`, flushed one by one so that a crash or a kill keeps what was measured.
// Unless --no-ops, a last pass at the first budget level runs with ExecuTorch's ETDump event tracer
// and writes it beside the records (FILE.etdump; the host reads it with the devtools Inspector).
// With more artifact directories (a benchmark's side by side: dense and gated programs), the budget
// levels of all of them are timed in turn, run by run, in this one process, so that the machine's
// noise falls on all alike; each level record then names its artifact ("artifact": DIR), and the
// checks and the operator pass are the first artifact's (the level records come at the end, all together).
//
//   edge_runner ARTIFACT_DIR [MORE_DIRS...] [--out FILE] [--runs 50] [--warmup 5] [--branch-runs 10] [--threads 1] [--no-ops]
//
// Exit status: 0 done, 2 a fault (also written as {"kind": "error", "message": ...}), 64 bad usage.
//
// With --replay, no program runs: the shared test vectors that export/vectors.py writes (one JSON file
// per case: a routed plan, its inputs and knobs, every method call the Python driver made with the
// arrays it passed and got back, and its outputs) are replayed through this runner's driver, as the
// Android demo's Java interpreter replays them (android_demo/plan/src/test/.../VectorsTest.java). Each
// call must be the Python driver's next one, with the same arrays (bit for bit); the recorded outputs
// are handed back; the final outputs must be Python's. One JSON line per vector ({"kind": "vector",
// "file", "name", "match", the decisions taken: "exit_layer", "skipped", "ks"[, "error"]}), then
// {"kind": "replay", "vectors", "matched", "calls", "exits_taken", "skipping", "k_seen"}.
//
//   edge_runner --replay VECTORS_DIR
//
// Exit status: 0 every vector matched, 1 some did not, 2 a fault, 64 bad usage.
#include <executorch/devtools/etdump/etdump_flatcc.h>
#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor.h>

#include <sys/resource.h>
#include <sys/utsname.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <numeric>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#ifndef EDGE_EXECUTORCH_VERSION
#define EDGE_EXECUTORCH_VERSION "unknown"
#endif

// The wheel ships no threadpool.h; these two are the XNNPACK thread pool's entry points in
// libexecutorch_threadpool.so (as the Python runtime's _unsafe_reset_threadpool uses them).
namespace executorch::extension::threadpool {
class ThreadPool {
 public:
  bool _unsafe_reset_threadpool(uint32_t num_threads);
};
ThreadPool* get_threadpool();
}  // namespace executorch::extension::threadpool

namespace {

using executorch::aten::ScalarType;
using executorch::extension::Module;
using executorch::runtime::EValue;

struct Fault : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// The plan version this runner reads: device/plan.schema.json's "version" const, where the plan format
// is defined (tests/test_plan_schema.py checks that the two agree).
constexpr long kPlanVersion = 4;

// ---- JSON: just what plan.json and a safetensors header need ------------------------------------
struct Json {
  enum Kind { Null, Bool, Number, String, Array, Object } kind = Null;
  bool b = false;
  double num = 0;
  std::string str;
  std::vector<Json> items;
  std::map<std::string, Json> fields;

  const Json& operator[](const std::string& key) const {
    auto it = fields.find(key);
    if (kind != Object || it == fields.end()) throw Fault("plan.json has no \"" + key + "\" where the runner needs it");
    return it->second;
  }
  const Json& operator[](size_t i) const {
    if (kind != Array || i >= items.size()) throw Fault("plan.json: index " + std::to_string(i) + " out of range");
    return items[i];
  }
  bool has(const std::string& key) const { return kind == Object && fields.count(key); }
  long integer() const { return static_cast<long>(num); }
};

class Parser {
 public:
  explicit Parser(const std::string& text) : s_(text) {}
  Json parse() {
    Json v = value();
    space();
    if (i_ != s_.size()) fail("trailing characters");
    return v;
  }

 private:
  const std::string& s_;
  size_t i_ = 0;
  [[noreturn]] void fail(const std::string& what) { throw Fault("malformed JSON (" + what + " at byte " + std::to_string(i_) + ")"); }
  void space() { while (i_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[i_]))) ++i_; }
  bool eat(char c) { space(); if (i_ < s_.size() && s_[i_] == c) { ++i_; return true; } return false; }
  void expect(char c) { if (!eat(c)) fail(std::string("expected '") + c + "'"); }
  bool word(const char* w) { size_t n = std::strlen(w); if (s_.compare(i_, n, w) == 0) { i_ += n; return true; } return false; }
  std::string string() {
    expect('"');
    std::string out;
    while (i_ < s_.size() && s_[i_] != '"') {
      char c = s_[i_++];
      if (c == '\\') {
        if (i_ >= s_.size()) fail("bad escape");
        char e = s_[i_++];
        switch (e) {
          case 'n': out += '\n'; break;
          case 't': out += '\t'; break;
          case 'r': out += '\r'; break;
          case 'b': out += '\b'; break;
          case 'f': out += '\f'; break;
          case 'u': {  // (plan names are ASCII; other code points are kept as '?')
            if (i_ + 4 > s_.size()) fail("bad \\u escape");
            unsigned cp = std::stoul(s_.substr(i_, 4), nullptr, 16);
            i_ += 4;
            out += cp < 128 ? static_cast<char>(cp) : '?';
            break;
          }
          default: out += e;
        }
      } else {
        out += c;
      }
    }
    if (i_ >= s_.size()) fail("unterminated string");
    ++i_;
    return out;
  }
  Json value() {
    space();
    if (i_ >= s_.size()) fail("unexpected end");
    Json v;
    char c = s_[i_];
    if (c == '{') {
      ++i_;
      v.kind = Json::Object;
      if (eat('}')) return v;
      do {
        space();
        std::string key = string();
        expect(':');
        v.fields[key] = value();
      } while (eat(','));
      expect('}');
    } else if (c == '[') {
      ++i_;
      v.kind = Json::Array;
      if (eat(']')) return v;
      do v.items.push_back(value()); while (eat(','));
      expect(']');
    } else if (c == '"') {
      v.kind = Json::String;
      v.str = string();
    } else if (word("true")) {
      v.kind = Json::Bool, v.b = true;
    } else if (word("false")) {
      v.kind = Json::Bool;
    } else if (word("null")) {
    } else {
      char* end = nullptr;
      v.num = std::strtod(s_.c_str() + i_, &end);
      if (end == s_.c_str() + i_) fail("unexpected character");
      v.kind = Json::Number;
      i_ = end - s_.c_str();
    }
    return v;
  }
};

// plan.json's format and version, as every driver checks them before reading the rest
void check_header(const Json& plan, const std::string& where) {
  if (!plan.has("format") || plan["format"].kind != Json::String || plan["format"].str != "edge-plan")
    throw Fault(where + " is not an edge plan; export the model again");
  if (!plan.has("version") || plan["version"].kind != Json::Number || plan["version"].num != kPlanVersion)
    throw Fault(where + " has a plan version this runner does not read (it reads " + std::to_string(kPlanVersion) +
                "); rebuild the runner or export again");
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Fault(path + " cannot be read; is this an edge artifact directory?");
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string quote(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\', out += c;
    else if (c == '\n') out += "\\n";
    else if (static_cast<unsigned char>(c) < 0x20) out += ' ';
    else out += c;
  }
  return out + "\"";
}

// ---- arrays: host-side values between method calls -----------------------------------------------
struct Array {
  ScalarType type = ScalarType::Float;
  std::vector<int32_t> shape;
  std::vector<uint8_t> data;

  size_t numel() const { size_t n = 1; for (auto d : shape) n *= d; return n; }
  template <class T> T* as() { return reinterpret_cast<T*>(data.data()); }
  template <class T> const T* as() const { return reinterpret_cast<const T*>(data.data()); }
};

// a borrowed tensor: an Array's memory (or its first rows), or a method's output in the program's own
// memory, valid until that method runs again (a run of the plan calls each method at most once)
struct View {
  const void* data;
  std::vector<int32_t> shape;
  ScalarType type;

  template <class T> const T* as() const { return static_cast<const T*>(data); }
};

View view(const Array& a) { return {a.data.data(), a.shape, a.type}; }

size_t itemsize(ScalarType t) { return t == ScalarType::Float ? 4 : t == ScalarType::Long ? 8 : 1; }

Array copy(const View& v) {
  Array a;
  a.type = v.type;
  a.shape = v.shape;
  size_t n = itemsize(v.type);
  for (auto d : v.shape) n *= d;
  a.data.assign(static_cast<const uint8_t*>(v.data), static_cast<const uint8_t*>(v.data) + n);
  return a;
}

View from_evalue(const EValue& v, const std::string& method) {
  if (!v.isTensor()) throw Fault("method " + method + " returned a non-tensor output");
  const auto& t = v.toTensor();
  View out{t.const_data_ptr(), {t.sizes().begin(), t.sizes().end()}, t.scalar_type()};
  if (out.type != ScalarType::Float && out.type != ScalarType::Long && out.type != ScalarType::Bool)
    throw Fault("method " + method + " returned an unsupported dtype");
  return out;
}

// checks.safetensors: an 8-byte header length, a JSON header {name: {dtype, shape, data_offsets}}, data
std::map<std::string, Array> read_safetensors(const std::string& path) {
  std::string bytes = read_file(path);
  if (bytes.size() < 8) throw Fault(path + " is truncated; export the artifact again");
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);  // little-endian, as on every target we build for
  if (n > bytes.size() - 8) throw Fault(path + " is truncated; export the artifact again");
  Json header = Parser(bytes.substr(8, n)).parse();
  std::map<std::string, Array> out;
  const std::map<std::string, ScalarType> types = {{"F32", ScalarType::Float}, {"I64", ScalarType::Long}, {"BOOL", ScalarType::Bool}};
  for (const auto& [name, spec] : header.fields) {
    if (name == "__metadata__") continue;
    auto t = types.find(spec["dtype"].str);
    if (t == types.end()) throw Fault(path + ": tensor " + name + " has unsupported dtype " + spec["dtype"].str);
    Array a;
    a.type = t->second;
    for (const auto& d : spec["shape"].items) a.shape.push_back(static_cast<int32_t>(d.num));
    size_t begin = spec["data_offsets"][0].integer(), end = spec["data_offsets"][1].integer();
    if (end < begin || 8 + n + end > bytes.size() || end - begin != a.numel() * itemsize(a.type))
      throw Fault(path + ": tensor " + name + " is out of bounds; export the artifact again");
    a.data.assign(bytes.begin() + 8 + n + begin, bytes.begin() + 8 + n + end);
    out[name] = std::move(a);
  }
  return out;
}

// ---- the program: methods called by name on host arrays ------------------------------------------
class Program {
 public:
  explicit Program(const std::string& path, std::unique_ptr<executorch::runtime::EventTracer> tracer = nullptr)
      : module_(path, Module::LoadMode::Mmap, std::move(tracer)) {
    if (module_.load() != executorch::runtime::Error::Ok)
      throw Fault(path + " is not a loadable ExecuTorch program; export it again");
  }
  // the outputs alias the method's memory: see View
  std::vector<View> call(const std::string& method, const std::vector<View>& args) {
    std::vector<executorch::extension::TensorPtr> tensors;
    std::vector<EValue> inputs;
    for (const View& a : args) {
      tensors.push_back(executorch::extension::from_blob(const_cast<void*>(a.data), a.shape, a.type));
      inputs.emplace_back(*tensors.back());
    }
    auto result = module_.execute(method, inputs);
    if (!result.ok()) {
      std::string shapes;
      for (const View& a : args) {
        shapes += shapes.empty() ? "(" : ", (";
        for (size_t i = 0; i < a.shape.size(); ++i) shapes += (i ? ", " : "") + std::to_string(a.shape[i]);
        shapes += ")";
      }
      throw Fault("ExecuTorch failed running method " + method + " on inputs of shape " + shapes + " (error " +
                  std::to_string(static_cast<int>(result.error())) + "); check the inputs against plan.json");
    }
    std::vector<View> out;
    for (const auto& v : *result) out.push_back(from_evalue(v, method));
    return out;
  }

  // the ETDump recorded so far (a program loaded with an ETDumpGen), written to `path`, or dropped where
  // `path` is empty; taking it starts a new one
  void take_etdump(const std::string& path) {
    auto* gen = static_cast<executorch::etdump::ETDumpGen*>(module_.event_tracer());
    executorch::etdump::ETDumpResult r = gen->get_etdump_data();
    if (r.buf == nullptr) throw Fault("ExecuTorch recorded no ETDump events");
    std::unique_ptr<void, decltype(&std::free)> owned(r.buf, &std::free);
    if (path.empty()) return;
    std::ofstream f(path, std::ios::binary);
    f.write(static_cast<const char*>(r.buf), static_cast<std::streamsize>(r.size));
    if (!f) throw Fault("cannot write " + path);
  }

 private:
  Module module_;
};

using Values = std::map<std::string, Array>;

Array filled(ScalarType type, std::vector<int32_t> shape, int64_t value) {
  Array a;
  a.type = type;
  a.shape = std::move(shape);
  a.data.resize(a.numel() * itemsize(type));  // zeros
  if (value == 0) return a;
  if (type == ScalarType::Long) std::fill_n(a.as<int64_t>(), a.numel(), value);
  else if (type == ScalarType::Bool) std::fill_n(a.as<bool>(), a.numel(), true);
  else std::fill_n(a.as<float>(), a.numel(), static_cast<float>(value));
  return a;
}

template <class Map>
const typename Map::mapped_type& get(const Map& v, const std::string& name) {
  auto it = v.find(name);
  if (it == v.end()) throw Fault("the plan reads \"" + name + "\" before any method wrote it; export the model again");
  return it->second;
}

// Knob values (a budget level's, a test vector's: flat lists, row-major), shaped as the plan's knobs say
Values shaped_knobs(const Json& plan, const Json& values, const std::string& where) {
  Values k;
  for (const auto& spec : plan["knobs"].items) {
    const auto& vals = values[spec["name"].str].items;
    std::vector<int32_t> shape;
    size_t count = 1;
    for (const auto& d : spec["shape"].items) {
      shape.push_back(static_cast<int32_t>(d.integer()));
      count *= static_cast<size_t>(d.integer());
    }
    if (count != vals.size()) throw Fault(where + ": knob " + spec["name"].str + " must have " + std::to_string(count) + " values");
    Array a = filled(ScalarType::Float, shape, 0);
    for (size_t i = 0; i < vals.size(); ++i) a.as<float>()[i] = static_cast<float>(vals[i].num);
    k[spec["name"].str] = std::move(a);
  }
  return k;
}

// What the driver writes between method calls (the tokens gathered for the units, and y per adaptive FFN), kept
// from run to run: a fresh 200 KB buffer each call is a fresh mapping whose pages fault in on every run
// (MiniLM routed, 6 ACMs: 0.5 ms a run at k = 0 and 1.6 ms at half the learners, ~6 % of the dense model)
struct Scratch {
  std::vector<float> xs;
  std::vector<Array> ys;  // one per ACM or MoE: its view stays valid while the next method reads it
};

// The routed plan, as export/routed.py's drive runs it: returns [output, exit_layer, skipped, (ks)].
// `program`: anything with call(method, views) -> views (a Program, or a Replay of recorded calls).
template <class Methods>
std::vector<Array> drive(Methods& program, const Json& section, int layers, const Values& inputs, const Values& knobs,
                         Scratch& scratch) {
  std::map<std::string, View> values;  // (no copies: views of the inputs and of the methods' outputs)
  for (const auto& [name, a] : inputs) values[name] = view(a);
  const Json& segments = section["segments"];
  const long acms = section["acms"].integer();
  scratch.ys.resize(acms);  // (the first run sizes it; later runs find it so)
  int64_t exit_layer = layers;
  Array skipped = filled(ScalarType::Bool, {layers}, 0);
  Array ks;
  Array output;
  size_t s = 0;
  while (true) {
    const Json& seg = segments[s];
    const Json& then = seg["then"];
    std::vector<View> feeds;
    for (const auto& name : seg["inputs"].items) {
      if (name.str == "gate_bias" || name.str == "experts") {  // this gate's row of its knob: an ACM's bias (1,),
        const Array& knob = get(knobs, name.str);               // a MoE's [K, prices] (1, 1 + E)
        const int32_t width = knob.shape.size() > 1 ? knob.shape[1] : 1;
        const long row = then[then["kind"].str].integer();
        if (row < 0 || static_cast<size_t>(row + 1) * width > knob.numel()) throw Fault("plan.json's " + name.str + " row is out of range; export the model again");
        std::vector<int32_t> shape = knob.shape.size() > 1 ? std::vector<int32_t>{1, width} : std::vector<int32_t>{1};
        feeds.push_back({knob.as<float>() + row * width, shape, ScalarType::Float});
      } else {
        feeds.push_back(get(values, name.str));
      }
    }
    std::vector<View> outs = program.call(seg["method"].str, feeds);
    const auto& names = seg["outputs"].items;
    if (outs.size() != names.size()) throw Fault("method " + seg["method"].str + " returned a different number of outputs than plan.json lists");
    for (size_t i = 0; i < names.size(); ++i) values[names[i].str] = outs[i];
    const std::string& kind = then["kind"].str;
    if (kind == "end") {
      output = copy(get(values, "output"));
      break;
    }
    if (kind == "exit") {
      if (get(values, "conf").as<float>()[0] >= get(knobs, "exit_thresholds").as<float>()[then["exit"].integer()]) {
        output = copy(get(values, "exit_output"));
        exit_layer = then["layer"].integer();
        break;
      }
      s = then["next"].integer();
    } else if (kind == "skip") {
      bool keep = get(values, "score").as<float>()[0] >= get(knobs, "skip_thresholds").as<float>()[then["router"].integer()];
      skipped.as<bool>()[then["layer"].integer() - 1] = !keep;
      s = (keep ? then["keep"] : then["skip"]).integer();
    } else if (kind == "acm") {  // piece j runs on the tokens that chose more than j learners (top: k = n runs the last alone)
      const View& x = get(values, "x");  // (T, H)
      const View& k = get(values, "k");  // (T,)
      const int T = x.shape[0], H = x.shape[1];
      const int64_t* kk = k.as<int64_t>();
      std::vector<int> counts(then["n"].integer());  // tokens per learner: a prefix of the sorted tokens
      for (size_t j = 0; j < counts.size(); ++j)
        counts[j] = static_cast<int>(std::count_if(kk, kk + T, [&](int64_t v) { return v > static_cast<int64_t>(j); }));
      const long a = then["acm"].integer();
      if (a < 0 || a >= acms) throw Fault("plan.json's acm decision names no ACM of the routed section; export the model again");
      Array& y = scratch.ys[a];
      if (y.shape != std::vector<int32_t>{1, T, H}) y = filled(ScalarType::Float, {1, T, H}, 0);
      const int n = static_cast<int>(counts.size());
      if (!then.has("top") || then["top"].kind != Json::Bool) throw Fault("plan.json's acm decision has no \"top\"; export the model again");
      const bool top = then["top"].b;  // the last piece is the original FFN: the first counts[n-1] tokens run it alone
      const int first = top && n ? counts[n - 1] : 0;  // where pieces j < n-1 start among the sorted tokens
      std::vector<int> order(T);  // tokens by k, most first: piece j takes rows [start_j, counts[j])
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](int p, int q) { return kk[p] > kk[q]; });
      const int m = counts.empty() ? 0 : counts[0];  // the tokens that run any learner: one call for all of them
      std::vector<const float*> got;
      if (m) {
        scratch.xs.resize(static_cast<size_t>(m) * H);
        float* xs = scratch.xs.data();
        for (int r = 0; r < m; ++r) std::memcpy(xs + r * H, x.as<float>() + order[r] * H, H * 4);
        std::vector<View> prefixes;  // (a piece no token needs gets 1 row, dropped)
        for (int j = 0; j < n; ++j) {
          const int start = j < n - 1 ? first : 0, rows = counts[j] - start;
          prefixes.push_back({xs + (rows > 0 ? static_cast<size_t>(start) * H : 0), {std::max(rows, 1), H}, ScalarType::Float});
        }
        const std::string& method = then["learners"].str;
        for (const View& v : program.call(method, prefixes)) got.push_back(v.as<float>());
        if (got.size() != counts.size()) throw Fault("method " + method + " returned a different number of outputs than the ACM has learners");
      }
      for (int r = 0; r < T; ++r) {  // token order[r]'s row of y: the sum of its k pieces' rows (0 if k = 0)
        float* row = y.as<float>() + static_cast<size_t>(order[r]) * H;
        const int64_t k_r = kk[order[r]];
        if (k_r <= 0) {
          std::memset(row, 0, H * 4);
          continue;
        }
        if (top && k_r >= n) {  // the top alone
          std::memcpy(row, got[n - 1] + static_cast<size_t>(r) * H, H * 4);
          continue;
        }
        const size_t at = static_cast<size_t>(r - first) * H;  // its row in pieces 0..k_r-1 (rows from `first`)
        std::memcpy(row, got[0] + at, H * 4);
        for (int64_t j = 1; j < k_r; ++j) {
          const float* g = got[j] + at;
          for (int i = 0; i < H; ++i) row[i] += g[i];
        }
      }
      values["y"] = view(y);
      if (ks.data.empty()) ks = filled(ScalarType::Long, {static_cast<int32_t>(acms), T}, -1);
      std::memcpy(ks.as<int64_t>() + a * T, kk, T * 8);
      s = then["next"].integer();
    } else if (kind == "moe") {  // expert e runs on the tokens whose bit mask k has bit e, in their order
      const View& x = get(values, "x");  // (T, H)
      const View& k = get(values, "k");  // (T,)
      const int T = x.shape[0], H = x.shape[1];
      const int64_t* kk = k.as<int64_t>();
      const int n = static_cast<int>(then["n"].integer());
      if (n < 1 || n > 62) throw Fault("plan.json's moe decision has n outside 1..62; export the model again");
      std::vector<std::vector<int>> rows(n);
      for (int t = 0; t < T; ++t)
        for (int e = 0; e < n; ++e)
          if ((kk[t] >> e) & 1) rows[e].push_back(t);
      const long a = then["moe"].integer();
      if (a < 0 || a >= acms) throw Fault("plan.json's moe decision names no MoE of the routed section; export the model again");
      Array& y = scratch.ys[a];
      if (y.shape != std::vector<int32_t>{1, T, H}) y = filled(ScalarType::Float, {1, T, H}, 0);
      float* yy = y.as<float>();
      std::fill(yy, yy + static_cast<size_t>(T) * H, 0.0f);  // zero for the tokens that run no expert
      size_t total = 0;
      for (const auto& r : rows) total += std::max<size_t>(r.size(), 1);
      if (std::any_of(rows.begin(), rows.end(), [](const std::vector<int>& r) { return !r.empty(); })) {
        scratch.xs.resize(total * H);  // expert e's tokens, one block each (an expert no token needs: row 0, dropped)
        float* xs = scratch.xs.data();
        std::vector<View> inputs;
        size_t at = 0;
        for (int e = 0; e < n; ++e) {
          const int m = static_cast<int>(rows[e].size());
          for (int r = 0; r < std::max(m, 1); ++r)
            std::memcpy(xs + (at + r) * H, x.as<float>() + static_cast<size_t>(m ? rows[e][r] : 0) * H, H * 4);
          inputs.push_back({xs + at * H, {std::max(m, 1), H}, ScalarType::Float});
          at += std::max(m, 1);
        }
        const std::string& method = then["experts"].str;
        std::vector<View> got = program.call(method, inputs);
        if (got.size() != rows.size()) throw Fault("method " + method + " returned a different number of outputs than the MoE has experts");
        for (int e = 0; e < n; ++e) {
          if (got[e].shape.size() != 2 || got[e].shape[0] < static_cast<int32_t>(rows[e].size()) || got[e].shape[1] != H)
            throw Fault("method " + method + " returned the wrong shape for expert " + std::to_string(e));
          const float* g = got[e].as<float>();
          for (size_t r = 0; r < rows[e].size(); ++r) {
            float* row = yy + static_cast<size_t>(rows[e][r]) * H;
            for (int i = 0; i < H; ++i) row[i] += g[r * H + i];
          }
        }
      }
      values["y"] = view(y);
      if (ks.data.empty()) ks = filled(ScalarType::Long, {static_cast<int32_t>(acms), T}, -1);
      std::memcpy(ks.as<int64_t>() + a * T, kk, T * 8);
      s = then["next"].integer();
    } else {
      throw Fault("plan.json has a decision of unknown kind \"" + kind + "\"; this runner is older than the plan");
    }
  }
  Array exit = filled(ScalarType::Long, {1}, exit_layer);
  std::vector<Array> out = {output, exit, skipped};
  if (acms) {
    if (ks.data.empty()) ks = filled(ScalarType::Long, {static_cast<int32_t>(acms), get(values, "h").shape[1]}, -1);
    out.push_back(ks);
  }
  return out;
}

// ---- the artifact ------------------------------------------------------------------------------------
struct Artifact {
  Json plan;
  std::map<std::string, Array> checks;
  std::unique_ptr<Program> program;
  Values inputs;
  std::string file;  // the program file
  Scratch scratch;  // the routed driver's buffers, reused run after run

  explicit Artifact(const std::string& dir) {
    plan = Parser(read_file(dir + "/plan.json")).parse();
    check_header(plan, dir + "/plan.json");
    if (plan["runtime"].str != "executorch") throw Fault(dir + " is a " + plan["runtime"].str + " artifact; this runner runs ExecuTorch artifacts");
    file = dir + "/" + plan["methods"].fields.begin()->second.str;
    program = std::make_unique<Program>(file);
    checks = read_safetensors(dir + "/checks.safetensors");
    for (const auto& spec : plan["inputs"].items) inputs[spec["name"].str] = check("input." + spec["name"].str);
  }

  const Array& check(const std::string& name) const {
    auto it = checks.find(name);
    if (it == checks.end()) throw Fault("checks.safetensors has no " + name + "; export the artifact again");
    return it->second;
  }

  Values knobs(const Json& level) const { return shaped_knobs(plan, level, "budget level " + level["name"].str); }

  std::vector<Array> run(const Values& knobs) {
    if (plan["mode"].str == "graph") {
      std::vector<View> args;
      for (const auto& spec : plan["inputs"].items) args.push_back(view(inputs.at(spec["name"].str)));
      for (const auto& spec : plan["knobs"].items) args.push_back(view(knobs.at(spec["name"].str)));
      std::vector<Array> out;
      for (const View& v : program->call("forward", args)) out.push_back(copy(v));
      return out;
    }
    return drive(*program, plan["routed"], static_cast<int>(plan["model"]["layers"].integer()), inputs, knobs, scratch);
  }

  // what one run did, as device.measure.branch writes it
  std::string branch(const std::vector<Array>& out) const {
    std::ostringstream o;
    const auto& names = plan["outputs"].items;
    std::map<std::string, const Array*> got;
    for (size_t i = 0; i < names.size() && i < out.size(); ++i) got[names[i].str] = &out[i];
    o << "{\"exit_layer\": " << got.at("exit_layer")->as<int64_t>()[0] << ", \"skipped\": [";
    const Array* sk = got.at("skipped");
    bool first = true;
    for (size_t i = 0; i < sk->numel(); ++i)
      if (sk->as<bool>()[i]) o << (first ? "" : ", ") << i + 1, first = false;
    o << "]";
    if (got.count("ks")) {  // units run per token over the layers reached: an ACM's k, a MoE's bit mask's bits
      const Array* ks = got.at("ks");
      const bool moe = plan["control_flow"].has("moes") && !plan["control_flow"]["moes"].items.empty();
      double sum = 0;
      size_t n = 0;
      for (size_t i = 0; i < ks->numel(); ++i) {
        const int64_t k = ks->as<int64_t>()[i];
        if (k >= 0) sum += moe ? __builtin_popcountll(static_cast<unsigned long long>(k)) : k, ++n;
      }
      double units = moe ? plan["control_flow"]["moes"][0]["experts"].num : plan["control_flow"]["acms"][0]["learners"].num;
      o << (moe ? ", \"moe_fraction\": " : ", \"acm_fraction\": ") << (n ? sum / n / units : 0.0);
    }
    o << "}";
    return o.str();
  }

  // (max abs difference over the float outputs, every int/bool output equal) against the eager ones
  std::pair<double, bool> compare(const std::vector<Array>& out, size_t c) const {
    double diff = 0;
    bool same = true;
    const auto& names = plan["outputs"].items;
    for (size_t i = 0; i < names.size(); ++i) {
      const Array& want = check("case" + std::to_string(c) + ".expected." + names[i].str);
      const Array& got = out.at(i);
      if (got.shape != want.shape || got.type != want.type) { same = false; diff = INFINITY; continue; }
      if (got.type == ScalarType::Float) {
        for (size_t j = 0; j < got.numel(); ++j) diff = std::max(diff, static_cast<double>(std::fabs(got.as<float>()[j] - want.as<float>()[j])));
      } else {
        same = same && got.data == want.data;
      }
    }
    return {diff, same};
  }

  Values case_knobs(size_t c) const {
    Values k;
    for (const auto& spec : plan["knobs"].items) k[spec["name"].str] = check("case" + std::to_string(c) + "." + spec["name"].str);
    return k;
  }
};

std::string ms_list(const std::vector<double>& ms) {
  std::ostringstream o;
  o.precision(6);
  o << "[";
  for (size_t i = 0; i < ms.size(); ++i) o << (i ? ", " : "") << ms[i];
  return o.str() + "]";
}

double timed_run(Artifact& a, const Values& knobs, std::vector<Array>& out) {  // ms
  auto t0 = std::chrono::steady_clock::now();
  out = a.run(knobs);
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

std::string times(Artifact& a, const Values& knobs, int runs, int warmup, std::vector<Array>& out) {
  for (int i = 0; i < warmup; ++i) out = a.run(knobs);
  std::vector<double> ms;
  for (int i = 0; i < runs; ++i) ms.push_back(timed_run(a, knobs, out));
  return ms_list(ms);
}

std::string cpu_name() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line)) {
    for (const char* key : {"model name", "Hardware", "CPU part"}) {
      if (line.rfind(key, 0) == 0 && line.find(':') != std::string::npos) {
        std::string v = line.substr(line.find(':') + 1);
        return v.substr(v.find_first_not_of(" \t"));
      }
    }
  }
  return "unknown";
}

// peak resident memory: /proc's VmHWM is this program's own (getrusage's maxrss keeps the high-water
// mark of the process that exec'd it, a Python interpreter when the profiler starts the runner)
double rss_mb() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  rusage r{};
  getrusage(RUSAGE_SELF, &r);
  return r.ru_maxrss / 1024.0;
}

int usage() {
  std::cerr << "usage: edge_runner ARTIFACT_DIR [MORE_DIRS...] [--out FILE] [--runs N] [--warmup N] [--branch-runs N] [--threads N] [--no-ops]\n"
               "       edge_runner --replay VECTORS_DIR\n";
  return 64;
}

// ---- replay: the shared test vectors (export/vectors.py), no program -----------------------------------
Array tensor_of(const Json& t, const std::string& where) {  // export.vectors.tensor: {dtype, shape, data}
  static const std::map<std::string, ScalarType> types = {{"float32", ScalarType::Float}, {"int64", ScalarType::Long}, {"bool", ScalarType::Bool}};
  auto type = types.find(t["dtype"].str);
  if (type == types.end()) throw Fault(where + ": a tensor of unknown dtype " + t["dtype"].str);
  std::vector<int32_t> shape;
  for (const auto& d : t["shape"].items) shape.push_back(static_cast<int32_t>(d.integer()));
  Array a = filled(type->second, shape, 0);
  const auto& data = t["data"].items;
  if (data.size() != a.numel()) throw Fault(where + ": a tensor's data does not fill its shape");
  for (size_t i = 0; i < data.size(); ++i) {  // (float32 values and token ids are exact in a JSON double)
    if (a.type == ScalarType::Float) a.as<float>()[i] = static_cast<float>(data[i].num);
    else if (a.type == ScalarType::Long) a.as<int64_t>()[i] = static_cast<int64_t>(data[i].num);
    else a.as<bool>()[i] = data[i].b;
  }
  return a;
}

bool same(const View& a, const View& b) {  // dtype, shape and every bit of the data
  if (a.type != b.type || a.shape != b.shape) return false;
  size_t n = itemsize(a.type);
  for (auto d : a.shape) n *= d;
  return n == 0 || std::memcmp(a.data, b.data, n) == 0;
}

// The program as the Python driver saw it: each call must be the next recorded one, with the same arrays;
// it returns the recorded outputs.
class Replay {
 public:
  Replay(const Json& calls, const std::string& name) : name_(name) {
    for (const auto& c : calls.items) {
      Call call{c["method"].str, {}, {}};
      for (const auto& t : c["inputs"].items) call.inputs.push_back(tensor_of(t, name));
      for (const auto& t : c["outputs"].items) call.outputs.push_back(tensor_of(t, name));
      calls_.push_back(std::move(call));
    }
  }

  std::vector<View> call(const std::string& method, const std::vector<View>& args) {
    if (next_ == calls_.size()) throw Fault(name_ + ": C++ called " + method + " after the Python driver had stopped");
    const Call& want = calls_[next_++];
    if (method != want.method) throw Fault(name_ + ": C++ called " + method + ", Python " + want.method);
    if (args.size() != want.inputs.size())
      throw Fault(name_ + ": " + method + " got " + std::to_string(args.size()) + " inputs, Python passed " + std::to_string(want.inputs.size()));
    for (size_t i = 0; i < args.size(); ++i)
      if (!same(args[i], view(want.inputs[i]))) throw Fault(name_ + ": input " + std::to_string(i) + " of " + method + " differs from Python's");
    std::vector<View> out;
    for (const Array& a : want.outputs) out.push_back(view(a));
    return out;
  }

  size_t made() const { return next_; }
  size_t recorded() const { return calls_.size(); }
  const std::string& next_method() const { return calls_.at(next_).method; }

 private:
  struct Call {
    std::string method;
    std::vector<Array> inputs, outputs;
  };
  std::string name_;
  std::vector<Call> calls_;
  size_t next_ = 0;
};

int replay(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) throw Fault(dir + " is not a directory of test vectors (export/vectors.py writes them)");
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".json") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  if (files.empty()) throw Fault("no test vectors (*.json) in " + dir);
  size_t matched = 0, calls = 0, exits = 0, skipping = 0;
  std::set<int64_t> k_seen;
  for (const auto& f : files) {
    std::string name = f.filename().string(), decisions, error;
    try {
      Json v = Parser(read_file(f.string())).parse();
      name = v["name"].str;
      const Json& plan = v["plan"];
      check_header(plan, name + ": its plan");
      if (plan["mode"].str != "routed") throw Fault(name + ": a vector's plan is in the routed mode");
      const int layers = static_cast<int>(plan["model"]["layers"].integer());
      Values inputs;
      for (const auto& [n, t] : v["inputs"].fields) inputs[n] = tensor_of(t, name);
      Values knobs = shaped_knobs(plan, v["knobs"], name);
      Replay program(v["calls"], name);
      Scratch scratch;
      std::vector<Array> out = drive(program, plan["routed"], layers, inputs, knobs, scratch);
      if (program.made() < program.recorded()) throw Fault(name + ": C++ stopped before the Python driver's call " + program.next_method());
      calls += program.made();
      const auto& names = plan["outputs"].items;
      if (out.size() != names.size()) throw Fault(name + ": the driver returned " + std::to_string(out.size()) + " outputs, the plan lists " + std::to_string(names.size()));
      std::map<std::string, const Array*> got;
      for (size_t i = 0; i < names.size(); ++i) got[names[i].str] = &out[i];
      std::ostringstream d;  // the decisions taken, as the arrays the driver returned
      const int64_t exit_layer = got.at("exit_layer")->as<int64_t>()[0];
      d << ", \"exit_layer\": " << exit_layer << ", \"skipped\": [";
      const Array* sk = got.at("skipped");
      bool any_skipped = false;
      for (size_t i = 0; i < sk->numel(); ++i) {
        d << (i ? ", " : "") << (sk->as<bool>()[i] ? "true" : "false");
        any_skipped = any_skipped || sk->as<bool>()[i];
      }
      d << "], \"ks\": ";
      if (got.count("ks")) {
        const Array* ks = got.at("ks");
        const size_t rows = ks->shape.at(0), cols = ks->shape.at(1);
        d << "[";
        for (size_t r = 0; r < rows; ++r) {
          d << (r ? ", [" : "[");
          for (size_t c = 0; c < cols; ++c) {
            const int64_t k = ks->as<int64_t>()[r * cols + c];
            d << (c ? ", " : "") << k;
            if (k >= 0) k_seen.insert(k);
          }
          d << "]";
        }
        d << "]";
      } else {
        d << "null";
      }
      decisions = d.str();
      exits += exit_layer < layers;
      skipping += any_skipped;
      std::string differ;
      for (size_t i = 0; i < names.size(); ++i)
        if (!same(view(out[i]), view(tensor_of(v["expected"][names[i].str], name)))) differ += (differ.empty() ? "" : ", ") + names[i].str;
      if (!differ.empty()) error = name + ": output " + differ + " differs from Python's";
    } catch (const std::exception& e) {
      error = e.what();
    }
    matched += error.empty();
    std::cout << "{\"kind\": \"vector\", \"file\": " << quote(f.filename().string()) << ", \"name\": " << quote(name)
              << ", \"match\": " << (error.empty() ? "true" : "false") << decisions
              << (error.empty() ? "" : ", \"error\": " + quote(error)) << "}\n";
  }
  std::cout << "{\"kind\": \"replay\", \"vectors\": " << files.size() << ", \"matched\": " << matched << ", \"calls\": " << calls
            << ", \"exits_taken\": " << exits << ", \"skipping\": " << skipping << ", \"k_seen\": [";
  for (auto it = k_seen.begin(); it != k_seen.end(); ++it) std::cout << (it == k_seen.begin() ? "" : ", ") << *it;
  std::cout << "]}" << std::endl;
  return matched == files.size() ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return usage();
  if (std::string(argv[1]) == "--replay") {
    if (argc != 3) return usage();
    try {
      return replay(argv[2]);
    } catch (const std::exception& e) {
      std::cout << "{\"kind\": \"error\", \"message\": " << quote(e.what()) << "}" << std::endl;
      std::cerr << "error: " << e.what() << "\n";
      return 2;
    }
  }
  std::vector<std::string> dirs{argv[1]};
  std::string out_path;
  int runs = 50, warmup = 5, branch_runs = 10, threads = 1;
  bool ops = true;
  for (int i = 2; i < argc; ++i) {
    std::string flag = argv[i];
    if (flag == "--no-ops") { ops = false; continue; }
    if (flag.rfind("--", 0) != 0) { dirs.push_back(flag); continue; }
    if (i + 1 >= argc) return usage();
    std::string v = argv[++i];
    try {
      if (flag == "--out") out_path = v;
      else if (flag == "--runs") runs = std::stoi(v);
      else if (flag == "--warmup") warmup = std::stoi(v);
      else if (flag == "--branch-runs") branch_runs = std::stoi(v);
      else if (flag == "--threads") threads = std::stoi(v);
      else return usage();
    } catch (const std::exception&) {
      return usage();
    }
    if (runs < 1 || warmup < 0 || branch_runs < 0 || threads < 1) return usage();
  }
  std::ofstream file;
  if (!out_path.empty()) {
    file.open(out_path, std::ios::app);
    if (!file) { std::cerr << "error: cannot write " << out_path << "\n"; return 2; }
  }
  std::ostream& out = out_path.empty() ? std::cout : file;
  auto write = [&](const std::string& record) { out << record << "\n" << std::flush; };
  try {
    double rss0 = rss_mb();
    executorch::extension::threadpool::get_threadpool()->_unsafe_reset_threadpool(threads);
    std::vector<std::unique_ptr<Artifact>> artifacts;
    for (const auto& dir : dirs) artifacts.push_back(std::make_unique<Artifact>(dir));
    Artifact& a = *artifacts[0];
    utsname u{};
    uname(&u);
    write(std::string("{\"kind\": \"device\", \"machine\": ") + quote(u.machine) + ", \"cpu\": " + quote(cpu_name()) +
          ", \"cores\": " + std::to_string(std::thread::hardware_concurrency()) + ", \"os\": " +
          quote(std::string(u.sysname) + "-" + u.release) + ", \"runtime\": \"executorch\", \"runtime_version\": " +
          quote(EDGE_EXECUTORCH_VERSION) + ", \"runner\": \"native\", \"threads\": " + std::to_string(threads) + "}");
    std::vector<Array> o;
    if (artifacts.size() == 1) {
      for (const auto& level : a.plan["budget_levels"].items) {
        std::string ms = times(a, a.knobs(level), runs, warmup, o);
        write("{\"kind\": \"level\", \"name\": " + quote(level["name"].str) + ", \"ms\": " + ms + ", \"branch\": " + a.branch(o) + "}");
      }
    } else {  // side by side: every (artifact, level) in turn, run by run
      struct Case { size_t artifact; const Json* level; Values knobs; std::vector<double> ms; std::vector<Array> out; };
      std::vector<Case> cases;
      for (size_t i = 0; i < artifacts.size(); ++i)
        for (const auto& level : artifacts[i]->plan["budget_levels"].items) cases.push_back({i, &level, artifacts[i]->knobs(level), {}, {}});
      for (auto& c : cases)
        for (int i = 0; i < warmup; ++i) c.out = artifacts[c.artifact]->run(c.knobs);
      for (int r = 0; r < runs; ++r)
        for (auto& c : cases) c.ms.push_back(timed_run(*artifacts[c.artifact], c.knobs, c.out));
      for (const auto& c : cases)
        write("{\"kind\": \"level\", \"name\": " + quote((*c.level)["name"].str) + ", \"artifact\": " + quote(dirs[c.artifact]) +
              ", \"ms\": " + ms_list(c.ms) + ", \"branch\": " + artifacts[c.artifact]->branch(c.out) + "}");
    }
    const auto& checks = a.plan["checks"].items;
    for (size_t c = 0; branch_runs && c < checks.size(); ++c) {  // (--branch-runs 0: no checks)
      std::string ms = times(a, a.case_knobs(c), branch_runs, 1, o);
      auto [diff, same] = a.compare(o, c);
      std::ostringstream d;
      d << diff;
      write("{\"kind\": \"branch\", \"case\": " + quote(checks[c]["case"].str) + ", \"ms\": " + ms + ", \"branch\": " +
            a.branch(o) + ", \"max_abs_diff\": " + (std::isfinite(diff) ? d.str() : "null") +
            ", \"outputs_match\": " + (same && diff <= a.plan["tolerance"].num ? "true" : "false") + "}");
    }
    if (ops && !out_path.empty()) {  // a pass of its own: the tracer costs time
      const Json& level = a.plan["budget_levels"][0];
      Values knobs = a.knobs(level);
      for (auto& other : artifacts) other->program.reset();  // (first: the peak memory stays one program's)
      a.program = std::make_unique<Program>(a.file, std::make_unique<executorch::etdump::ETDumpGen>());
      int n = std::max(1, std::min(runs, 10)), w = std::min(warmup, n);
      if (w) {  // freshly loaded: without it the first, colder run is in the profile
        for (int i = 0; i < w; ++i) o = a.run(knobs);
        a.program->take_etdump("");
      }
      for (int i = 0; i < n; ++i) o = a.run(knobs);
      a.program->take_etdump(out_path + ".etdump");
      write("{\"kind\": \"etdump\", \"file\": " + quote(out_path + ".etdump") + ", \"level\": " + quote(level["name"].str) +
            ", \"runs\": " + std::to_string(n) + ", \"warmup\": " + std::to_string(w) + "}");
    }
    std::ostringstream m;
    m << "{\"kind\": \"memory\", \"peak_rss_mb\": " << rss_mb() << ", \"rss_at_start_mb\": " << rss0 << "}";
    write(m.str());
  } catch (const std::exception& e) {
    write("{\"kind\": \"error\", \"message\": " + quote(e.what()) + "}");
    std::cerr << "error: " << e.what() << "\n";
    return 2;
  }
  return 0;
}
