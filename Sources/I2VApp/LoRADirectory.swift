import Crypto
import Foundation
import I2VCore
import Logging
import Synchronization

/// The LoRA catalog as a directory of `.safetensors` files (`I2V_LORA_DIR`), shared by the nodes. Everything
/// listed is read from the files themselves: the header alone for the shapes, the whole file once for its
/// SHA-256. Both are kept per path, size and modification time, so listing again costs a `stat` per file, and
/// a file replaced in place is read again.
///
/// A file that is not a LoRA in safetensors form is left out of the listing, and said once in the log.
package final class LoRADirectory: LoRACatalog {
    package let directory: URL
    private let logger: Logger

    fileprivate struct Stamp: Equatable {
        var size: Int
        var modified: Date
    }

    fileprivate struct Known {
        var stamp: Stamp
        var entry: Result<LoRAEntry, SafetensorsRefusal>
    }

    fileprivate let known = Mutex<[String: Known]>([:])

    package init(directory: URL, logger: Logger) {
        self.directory = directory
        self.logger = logger
    }

    package func entries() async -> [LoRAEntry] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        return names.sorted().compactMap { file in
            guard file.hasSuffix(Self.suffix), !file.hasPrefix(".") else { return nil }
            return entry(file: file)
        }
    }

    package func entry(named name: String) async -> LoRAEntry? {
        guard Self.isPlainName(name) else { return nil }
        return entry(file: name + Self.suffix)
    }

    static let suffix = ".safetensors"

    /// A name that stays inside the directory.
    static func isPlainName(_ name: String) -> Bool {
        !name.isEmpty && !name.hasPrefix(".") && !name.contains("/") && !name.contains("\0")
    }

    private func entry(file: String) -> LoRAEntry? {
        let path = directory.appending(path: file).path
        guard let attributes = try? FileManager.default.attributesOfItem(atPath: path),
            attributes[.type] as? FileAttributeType == .typeRegular,
            let size = (attributes[.size] as? NSNumber)?.intValue,
            let modified = attributes[.modificationDate] as? Date
        else {
            known.withLock { _ = $0.removeValue(forKey: path) }
            return nil
        }
        let stamp = Stamp(size: size, modified: modified)
        if let cached = known.withLock({ $0[path] }), cached.stamp == stamp {
            return try? cached.entry.get()
        }
        // Read outside the lock: hashing a large file takes a while, and other files need not wait for it.
        let name = String(file.dropLast(Self.suffix.count))
        let entry: Result<LoRAEntry, SafetensorsRefusal>
        do throws(SafetensorsRefusal) {
            let shapes = try SafetensorsHeader.read(path: path)
            let digest = try Self.sha256(path: path)
            let inner = shapes.innerDimension
            entry = .success(
                LoRAEntry(
                    name: name, path: path, sizeBytes: size, rank: shapes.rank, sha256: digest, innerDimension: inner,
                    models: LoRAEntry.models(innerDimension: inner)
                )
            )
        } catch {
            entry = .failure(error)
            logger.warning("not a usable LoRA file; it is left out of the LoRA catalog", metadata: ["path": "\(path)", "reason": "\(error.reason)"])
        }
        known.withLock { $0[path] = Known(stamp: stamp, entry: entry) }
        return try? entry.get()
    }

    static func sha256(path: String) throws(SafetensorsRefusal) -> String {
        guard let handle = FileHandle(forReadingAtPath: path) else { throw SafetensorsRefusal("cannot be opened") }
        defer { try? handle.close() }
        var hasher = SHA256()
        do {
            while let chunk = try handle.read(upToCount: 1 << 20), !chunk.isEmpty {
                hasher.update(data: chunk)
            }
        } catch {
            throw SafetensorsRefusal("cannot be read: \(error)")
        }
        return Hex.encode(hasher.finalize())
    }
}

/// Why a file is not a LoRA the catalog lists.
package struct SafetensorsRefusal: Error, Sendable, Equatable, CustomStringConvertible {
    package var reason: String
    package init(_ reason: String) { self.reason = reason }
    package var description: String { reason }
}

/// What the header of a LoRA file says of its layers.
package struct LoRAShapes: Sendable, Equatable {
    /// The largest rank among its layers (the smaller side of each `lora_A`/`lora_down` weight).
    package var rank: Int
    /// How many times each width is read by a `lora_A`/`lora_down` weight or written by a `lora_B`/`lora_up`
    /// one.
    package var widths: [Int: Int]

    /// The width most of its layers read or write: the transformer's hidden size. Attention layers read and
    /// write it, feed-forward layers read or write it, and the few other layers (embeddings, the head) are
    /// outnumbered, so it stands out whatever the key layout. nil where two widths are as common.
    package var innerDimension: Int? {
        let sorted = widths.sorted { $0.value > $1.value }
        guard let first = sorted.first else { return nil }
        if sorted.count > 1, sorted[1].value == first.value { return nil }
        return first.key
    }
}

/// Reads a safetensors header within bounds: 8 bytes of little-endian length, then at most 16 MiB of JSON that
/// must describe tensors tiling the rest of the file exactly. Nothing but the header is read, and nothing in
/// it is trusted before it is checked against the file's size.
package enum SafetensorsHeader {
    package static let maxHeaderBytes = 16 << 20

    private static let dtypeSizes: [String: Int] = [
        "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
        "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8,
    ]

    private struct Tensor: Decodable {
        var dtype: String?
        var shape: [Int]?
        var dataOffsets: [Int]?

        enum CodingKeys: String, CodingKey {
            case dtype, shape
            case dataOffsets = "data_offsets"
        }
    }

    package static func read(path: String) throws(SafetensorsRefusal) -> LoRAShapes {
        guard let handle = FileHandle(forReadingAtPath: path) else { throw SafetensorsRefusal("cannot be opened") }
        defer { try? handle.close() }
        let fileSize: Int
        let prefix: Data
        do {
            fileSize = Int(try handle.seekToEnd())
            try handle.seek(toOffset: 0)
            prefix = try handle.read(upToCount: 8) ?? Data()
        } catch {
            throw SafetensorsRefusal("cannot be read: \(error)")
        }
        guard prefix.count == 8 else { throw SafetensorsRefusal("is shorter than a safetensors header (\(fileSize) bytes)") }
        let length = prefix.reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        guard length <= UInt64(maxHeaderBytes) else {
            throw SafetensorsRefusal("claims a \(length)-byte header, more than the \(maxHeaderBytes) bytes a safetensors header may have")
        }
        guard 8 + Int(length) <= fileSize else {
            throw SafetensorsRefusal("claims a \(length)-byte header, past the end of its \(fileSize) bytes")
        }
        let header: Data
        do {
            header = try handle.read(upToCount: Int(length)) ?? Data()
        } catch {
            throw SafetensorsRefusal("cannot be read: \(error)")
        }
        guard header.count == Int(length) else { throw SafetensorsRefusal("ended while its header was read") }
        return try shapes(header: header, dataBytes: fileSize - 8 - Int(length))
    }

    static func shapes(header: Data, dataBytes: Int) throws(SafetensorsRefusal) -> LoRAShapes {
        let entries: [String: Tensor]
        do {
            entries = try JSONDecoder().decode([String: Tensor].self, from: header)
        } catch {
            throw SafetensorsRefusal("has a header that is not a JSON object of tensors")
        }
        var spans: [(start: Int, end: Int)] = []
        var shapes = LoRAShapes(rank: 0, widths: [:])
        var loraWeights = 0
        for (key, tensor) in entries where key != "__metadata__" {
            guard let dtype = tensor.dtype, let shape = tensor.shape, let offsets = tensor.dataOffsets, offsets.count == 2 else {
                throw SafetensorsRefusal("has tensor \(key) without a dtype, shape and data_offsets")
            }
            guard let itemSize = dtypeSizes[dtype] else { throw SafetensorsRefusal("has tensor \(key) of unknown dtype \(dtype)") }
            guard shape.allSatisfy({ $0 >= 0 }), offsets[0] >= 0, offsets[0] <= offsets[1], offsets[1] <= dataBytes else {
                throw SafetensorsRefusal("has tensor \(key) outside the file's \(dataBytes) bytes of data")
            }
            var bytes = itemSize
            var overflow = false
            for side in shape {
                let product = bytes.multipliedReportingOverflow(by: side)
                bytes = product.partialValue
                overflow = overflow || product.overflow
            }
            guard !overflow, bytes == offsets[1] - offsets[0] else {
                throw SafetensorsRefusal("has tensor \(key) whose shape \(shape) of \(dtype) does not match its \(offsets[1] - offsets[0]) bytes")
            }
            spans.append((offsets[0], offsets[1]))
            guard shape.count >= 2 else { continue }
            if key.contains(".lora_A.") || key.contains(".lora_down.") {
                // `rank x in` (a convolution's adds its kernel after).
                loraWeights += 1
                shapes.rank = max(shapes.rank, min(shape[0], shape[1]))
                shapes.widths[shape[1], default: 0] += 1
            } else if key.contains(".lora_B.") || key.contains(".lora_up.") {
                // `out x rank`.
                loraWeights += 1
                shapes.widths[shape[0], default: 0] += 1
            }
        }
        // The tensors must cover the data exactly: a gap or an overlap is a damaged or crafted file, and data
        // that ends early is a truncated one.
        var next = 0
        for span in spans.sorted(by: { ($0.start, $0.end) < ($1.start, $1.end) }) {
            guard span.start == next else { throw SafetensorsRefusal("has tensors that do not tile its data (a gap or an overlap at byte \(next))") }
            next = span.end
        }
        guard next == dataBytes else {
            throw SafetensorsRefusal("has \(dataBytes) bytes of data where its tensors take \(next)")
        }
        guard loraWeights > 0 else { throw SafetensorsRefusal("has no lora_A/lora_B or lora_down/lora_up weights") }
        return shapes
    }
}

extension LoRADirectory {
    /// Takes an entry the caller has just read and hashed (a LoRA stored from a URL), so its first listing
    /// does not read the whole file again.
    package func remember(_ entry: LoRAEntry) {
        guard let attributes = try? FileManager.default.attributesOfItem(atPath: entry.path),
            let size = (attributes[.size] as? NSNumber)?.intValue,
            let modified = attributes[.modificationDate] as? Date
        else { return }
        known.withLock { $0[entry.path] = Known(stamp: Stamp(size: size, modified: modified), entry: .success(entry)) }
    }
}
