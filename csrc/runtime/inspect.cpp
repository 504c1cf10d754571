// inspect_bundle (bundle.h): a bundle's header and metadata checked with the
// runtime's own rules, without loading its data (spaedge info).
#include "runtime/model.h"
#include "runtime/task.h"
#include "spaedge/bundle.h"

namespace spaedge {

BundleSummary inspect_bundle(const std::string& path, bool verify_hash) {
  // The header first, checked completely (cheap: a bundle with bad metadata
  // is refused without reading its data), then the data streamed through
  // the hash.
  BundleOptions o;
  o.load_data = false;
  o.verify_hash = false;
  Bundle b(path, "", o);
  BundleSummary s;
  s.path = b.path();
  s.format = b.format();
  s.version = b.meta("version");
  s.content_hash = b.content_hash();
  s.file_bytes = b.file_size();
  s.header_bytes = b.header_size();
  s.metadata = b.metadata();
  for (const TensorView& t : b.tensors()) {
    s.tensors.push_back({t.name, t.dtype, t.shape});
    s.numbers += t.numel;
  }
  if (s.format == "spaedge-base") {
    s.model = b.meta("model");
    Graph g;
    parse_graph(b, g);
    s.input_channels = g.input_channels;
    s.nodes = g.nodes.size();
    for (const Node& n : g.nodes) s.convs += n.op == Op::Conv;
  } else {
    TaskMetadata m = read_task_metadata(b);
    s.base_hash = m.base_hash;
    s.task = m.name;
    s.method = m.method;
    s.info = m.info;
    s.labels = m.labels;
    s.channels = m.channels;
    s.height = m.height;
    s.width = m.width;
    s.mean = m.mean;
    s.std = m.std;
    for (const auto& kv : m.entries[size_t(families::Family::shared)])
      s.shared_adapters[kv.first] = kv.second;
  }
  if (verify_hash) {
    o.verify_hash = true;
    Bundle v(path, "", o);  // the file again, the data streamed through the hash
    if (v.metadata() != b.metadata() || v.file_size() != b.file_size())
      b.fail(
          "file changed while being read (replace bundles by writing a new file and renaming it)");
    s.hash_verified = true;
  }
  return s;
}

}  // namespace spaedge
