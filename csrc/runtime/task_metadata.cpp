// A task bundle's metadata, read and validated once (task.h: TaskMetadata),
// for loading (Task) and inspecting (inspect_bundle) alike.
#include <cmath>
#include <map>

#include "runtime/json.h"
#include "runtime/task.h"

namespace spaedge {

namespace {

// The metadata of a bundle, or of one about to be written: what the checks
// read, and where a failure is reported.
struct Meta {
  const std::map<std::string, std::string>& map;
  const std::string& where;
  const std::string& path() const { return where; }
  const std::string* find_meta(const std::string& key) const {
    auto it = map.find(key);
    return it == map.end() ? nullptr : &it->second;
  }
  const std::string& meta(const std::string& key) const {
    const std::string* v = find_meta(key);
    if (!v) fail("missing metadata key '" + key + "'");
    return *v;
  }
  [[noreturn]] void fail(const std::string& msg) const { throw Error(where + ": " + msg); }
};

json::Value meta_json(const Meta& b, const std::string& key) {
  return json::parse(b.meta(key), b.path() + ": metadata '" + key + "'");
}

int meta_int(const Meta& b, const json::Value& obj, const std::string& key, const char* field,
             int lo, int hi) {
  const json::Value* v = obj.find(field);
  if (!v) b.fail("metadata '" + key + "': missing field '" + field + "'");
  if (!v->is(json::Type::Number) || v->number != std::floor(v->number) || v->number < lo ||
      v->number > hi)
    b.fail("metadata '" + key + "': field '" + field + "' must be an integer in [" +
           std::to_string(lo) + ", " + std::to_string(hi) + "]");
  return int(v->number);
}

std::vector<float> meta_floats(const Meta& b, const json::Value& obj, const std::string& key,
                               const char* field, size_t n) {
  const json::Value* v = obj.find(field);
  if (!v) b.fail("metadata '" + key + "': missing field '" + field + "'");
  if (!v->is(json::Type::Array) || v->array.size() != n)
    b.fail("metadata '" + key + "': field '" + field + "' must be a list of " + std::to_string(n) +
           " numbers (one per input channel)");
  std::vector<float> out;
  for (const auto& e : v->array) {
    if (!e.is(json::Type::Number))
      b.fail("metadata '" + key + "': field '" + field + "' must hold numbers");
    out.push_back(float(e.number));
  }
  return out;
}

}  // namespace

TaskMetadata read_task_metadata(const Bundle& bundle) {
  return read_task_metadata(bundle.metadata(), bundle.path());
}

TaskMetadata read_task_metadata(const std::map<std::string, std::string>& map,
                                const std::string& where) {
  const Meta b{map, where};
  TaskMetadata m;
  m.base_hash = b.meta("base_hash");
  bool hex = m.base_hash.size() == 64;
  for (char c : m.base_hash)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) hex = false;
  if (!hex) b.fail("metadata 'base_hash' is not 64 lowercase hex digits (a base's content_hash)");
  m.name = b.meta("task");
  if (m.name.empty()) b.fail("metadata 'task' is empty");
  m.method = b.meta("method");
  if (m.method.empty()) b.fail("metadata 'method' is empty");
  if (const std::string* info = b.find_meta("info")) {
    if (!meta_json(b, "info").is(json::Type::Object))
      b.fail("metadata 'info' must be a JSON object");
    m.info = *info;
  } else {
    m.info = "{}";
  }

  json::Value labels = meta_json(b, "labels");
  if (!labels.is(json::Type::Array) || labels.array.empty())
    b.fail("metadata 'labels' must be a non-empty JSON list of strings");
  std::map<std::string, size_t> seen;
  for (size_t i = 0; i < labels.array.size(); ++i) {
    const json::Value& l = labels.array[i];
    if (!l.is(json::Type::String))
      b.fail("metadata 'labels' must be a non-empty JSON list of strings");
    if (l.string.empty()) b.fail("metadata 'labels': label " + std::to_string(i) + " is empty");
    auto it = seen.emplace(l.string, i);
    if (!it.second)
      b.fail("metadata 'labels': label " + std::to_string(i) + " '" + l.string +
             "' repeats label " + std::to_string(it.first->second) +
             " (class names must be distinct)");
    m.labels.push_back(l.string);
  }

  json::Value in = meta_json(b, "input");
  if (!in.is(json::Type::Object)) b.fail("metadata 'input' must be a JSON object");
  m.channels = meta_int(b, in, "input", "channels", 1, kMaxInputChannels);
  m.height = meta_int(b, in, "input", "height", 1, kMaxInputSide);
  m.width = meta_int(b, in, "input", "width", 1, kMaxInputSide);
  m.mean = meta_floats(b, in, "input", "mean", size_t(m.channels));
  m.std = meta_floats(b, in, "input", "std", size_t(m.channels));
  for (size_t c = 0; c < m.std.size(); ++c) {
    if (!std::isfinite(m.mean[c]))
      b.fail("metadata 'input': mean[" + std::to_string(c) + "] is not finite");
    if (!(m.std[c] > 0) || !std::isfinite(m.std[c]))
      b.fail("metadata 'input': std[" + std::to_string(c) + "] must be a positive finite number");
  }

  if (const std::string* rank = b.find_meta("rank")) {
    const std::string& v = *rank;
    bool ok = !v.empty() && v.size() <= 6 && v[0] != '0';
    for (char c : v) ok = ok && c >= '0' && c <= '9';
    if (!ok || std::stoi(v) > kMaxRank)
      b.fail("metadata 'rank' must be an integer in [1, " + std::to_string(kMaxRank) +
             "] (the adapter rank), got '" + v + "'");
    m.rank = std::stoi(v);
  }

  // Each family's metadata key: {from: to}, non-empty strings (families.inc).
  for (size_t f = 0; f < families::kFamilies; ++f) {
    const families::Info& fi = families::list()[f];
    if (!*fi.metadata || !b.find_meta(fi.metadata)) continue;
    const std::string key = fi.metadata;
    json::Value obj = meta_json(b, key);
    if (!obj.is(json::Type::Object))
      b.fail("metadata '" + key + "' must be a JSON object {" + fi.map_from + ": " + fi.map_to +
             "}");
    for (const auto& kv : obj.object) {
      if (!kv.second.is(json::Type::String) || kv.second.string.empty())
        b.fail("metadata '" + key + "': entry '" + kv.first + "' must map to a " + fi.map_to +
               " name (a non-empty string)");
      m.entries[f].emplace_back(kv.first, kv.second.string);
    }
  }
  return m;
}

}  // namespace spaedge
