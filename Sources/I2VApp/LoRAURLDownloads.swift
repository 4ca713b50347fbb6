import Crypto
import Foundation
import I2VCore
import ImageIntake
import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// LoRAs given by URL (`I2V_LORA_URLS`), stored in the catalog directory under a name made from their content
/// (`url-` and the first 16 hex digits of the SHA-256), so the same file from any URL, any submit and any
/// node sharing the directory is one catalog entry.
///
/// The download goes through the image intake's client, so the same address rules apply (a blocked or
/// private address is refused unless `I2V_ALLOW_PRIVATE_IMAGE_HOSTS` opens the private ones), under the
/// LoRA's own byte cap and deadline. It streams into a hidden file in the catalog directory (same file
/// system: storing it is a link, not a copy), hashed on the way; the file is checked with the catalog's
/// own header rules and only then given its name. Whatever fails, the hidden file is removed.
///
/// A URL stored within `reuse` is not downloaded again while its file is still in the catalog, unchanged: a
/// client sending the same LoRA URL with every job pays for one download. Only the URL's SHA-256 is kept (a
/// signed URL's query can hold a secret), in this node's memory.
package struct LoRAURLDownloads: LoRAURLStore {
    package let catalog: LoRADirectory
    package let intake: ImageIntake
    package let limits: FileDownload
    package let reuse: Duration
    private let recent = RecentLoRAURLs()

    /// Hidden files of downloads, which the listing skips.
    static let partialPrefix = ".url-"
    static let partialSuffix = ".partial"

    package init(catalog: LoRADirectory, intake: ImageIntake, maxBytes: Int, timeout: Duration, reuse: Duration) {
        self.catalog = catalog
        self.intake = intake
        self.limits = FileDownload(noun: "LoRA", accept: "application/octet-stream, */*", maxBytes: maxBytes, timeout: timeout)
        self.reuse = reuse
    }

    /// The name a LoRA of this SHA-256 has in the catalog.
    package static func name(sha256: String) -> String { "url-" + sha256.prefix(16) }

    package func store(url: String, vet: @Sendable (LoRAEntry) -> String?, logger: Logger) async throws(LoRAURLFailure) -> LoRAEntry {
        let key = Hex.encode(SHA256.hash(data: Data(url.utf8)))
        if let stored = recent.stored(key, within: reuse), let entry = await catalog.entry(named: stored.name), entry.sha256 == stored.sha256 {
            if let problem = vet(entry) { throw LoRAURLFailure(.unusable, problem) }
            logger.debug("LoRA URL given again: its stored file is used", metadata: ["name": "\(entry.name)"])
            return entry
        }
        let entry = try await download(url: url, vet: vet, logger: logger)
        recent.remember(key, name: entry.name, sha256: entry.sha256, for: reuse)
        return entry
    }

    private func download(url: String, vet: @Sendable (LoRAEntry) -> String?, logger: Logger) async throws(LoRAURLFailure) -> LoRAEntry {
        let partial = catalog.directory.appending(path: Self.partialPrefix + RandomIdentifier.hex128() + Self.partialSuffix)
        defer { try? FileManager.default.removeItem(at: partial) }
        let sink: HashingFileSink
        do {
            sink = try HashingFileSink(path: partial.path)
        } catch {
            throw LoRAURLFailure(.storage, "could not be stored: \(error.reason)")
        }
        let size: Int
        do {
            size = try await intake.download(url, limits, into: sink, logger: logger)
            try sink.finish()
        } catch let failure as ImageIntakeError {
            sink.abandon()
            switch failure.cause {
            case .blockedAddress: throw LoRAURLFailure(.blockedAddress, failure.reason)
            case .tooLarge: throw LoRAURLFailure(.tooLarge, "\(failure.reason) (I2V_LORA_URL_MAX_BYTES)")
            default: throw LoRAURLFailure(.download, failure.reason)
            }
        } catch {
            sink.abandon()
            throw LoRAURLFailure(.storage, "could not be stored: \(error.reason)")
        }
        let shapes: LoRAShapes
        do {
            shapes = try SafetensorsHeader.read(path: partial.path)
        } catch {
            throw LoRAURLFailure(.notSafetensors, "is not a LoRA in safetensors form: it \(error.reason)")
        }
        let sha256 = sink.digest
        let name = Self.name(sha256: sha256)
        let file = catalog.directory.appending(path: name + LoRADirectory.suffix)
        let inner = shapes.innerDimension
        let entry = LoRAEntry(
            name: name, path: file.path, sizeBytes: size, rank: shapes.rank, sha256: sha256, innerDimension: inner,
            models: LoRAEntry.models(innerDimension: inner)
        )
        if let problem = vet(entry) { throw LoRAURLFailure(.unusable, problem) }

        // link(2) never replaces a file: a file of that name (the same content, stored by an earlier submit or
        // another node) is kept, and a task pinned to it stays valid.
        if link(partial.path, file.path) == 0 {
            catalog.remember(entry)
            logger.info("LoRA stored from a URL", metadata: ["name": "\(name)", "bytes": "\(size)", "rank": "\(shapes.rank)"])
            return entry
        }
        let linkError = errno
        if linkError != EEXIST {
            // A file system without hard links: rename instead (it replaces a file that appeared meanwhile,
            // which, named by its content, holds the same bytes).
            do {
                _ = try FileManager.default.replaceItemAt(file, withItemAt: partial)
            } catch {
                throw LoRAURLFailure(.storage, "could not be stored in the LoRA catalog: \(String(cString: strerror(linkError))); \(error)")
            }
            catalog.remember(entry)
            return entry
        }
        guard let existing = await catalog.entry(named: name), existing.sha256 == sha256 else {
            throw LoRAURLFailure(.storage, "could not be stored: the LoRA catalog holds another file named \(name)")
        }
        logger.debug("LoRA from a URL already in the catalog", metadata: ["name": "\(name)"])
        return existing
    }

    /// Removes hidden download files older than `age`: those a node left when it stopped mid-download.
    /// Younger ones may be another node's download in progress.
    package static func removeStalePartials(in directory: URL, olderThan age: Duration, logger: Logger) {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        let cutoff = Date().addingTimeInterval(-age.seconds)
        for name in names where name.hasPrefix(partialPrefix) && name.hasSuffix(partialSuffix) {
            let path = directory.appending(path: name).path
            guard let modified = (try? FileManager.default.attributesOfItem(atPath: path))?[.modificationDate] as? Date, modified < cutoff else { continue }
            try? FileManager.default.removeItem(atPath: path)
            logger.info("removed a LoRA download left unfinished", metadata: ["path": "\(path)"])
        }
    }
}

/// The URLs this node stored lately, by their SHA-256, with the catalog name and digest each gave, until when.
final class RecentLoRAURLs: Sendable {
    private struct Stored {
        var name: String
        var sha256: String
        var until: ContinuousClock.Instant
    }

    /// Bounds the memory a client sending endless distinct URLs can take; the oldest go first.
    private static let capacity = 4096
    private let entries = Mutex<[String: Stored]>([:])

    func stored(_ key: String, within reuse: Duration) -> (name: String, sha256: String)? {
        guard reuse > .zero else { return nil }
        return entries.withLock { entries in
            guard let stored = entries[key], stored.until > .now else { return nil }
            return (stored.name, stored.sha256)
        }
    }

    func remember(_ key: String, name: String, sha256: String, for reuse: Duration) {
        guard reuse > .zero else { return }
        let now = ContinuousClock.now
        entries.withLock { entries in
            entries[key] = Stored(name: name, sha256: sha256, until: now + reuse)
            guard entries.count > Self.capacity else { return }
            entries = entries.filter { $0.value.until > now }
            while entries.count > Self.capacity, let oldest = entries.min(by: { $0.value.until < $1.value.until })?.key {
                entries.removeValue(forKey: oldest)
            }
        }
    }
}

/// Writes a download to a file and hashes it on the way, so a 2 GiB LoRA is read from the network once and
/// never held in memory. The writes are plain buffered file writes, one chunk of the response at a time.
final class HashingFileSink: DownloadSink {
    private struct State {
        var handle: FileHandle?
        var hasher = SHA256()
    }

    private let state: Mutex<State>
    private let finished = Mutex<String?>(nil)

    init(path: String) throws(DownloadSinkFailure) {
        guard FileManager.default.createFile(atPath: path, contents: nil), let handle = FileHandle(forWritingAtPath: path) else {
            throw DownloadSinkFailure("cannot create \(path)")
        }
        state = Mutex(State(handle: handle))
    }

    func write(_ chunk: UnsafeRawBufferPointer) throws {
        try state.withLock { state in
            guard let handle = state.handle else { throw DownloadSinkFailure("the file is closed") }
            state.hasher.update(bufferPointer: chunk)
            do {
                try handle.write(contentsOf: Data(chunk))
            } catch {
                throw DownloadSinkFailure("writing the file failed: \(error)")
            }
        }
    }

    /// Closes the file, with its data on disk, and keeps the digest.
    func finish() throws(DownloadSinkFailure) {
        let outcome: Result<String, DownloadSinkFailure> = state.withLock { state in
            guard let handle = state.handle else { return .failure(DownloadSinkFailure("the file is closed")) }
            state.handle = nil
            do {
                try handle.synchronize()
                try handle.close()
            } catch {
                return .failure(DownloadSinkFailure("closing the file failed: \(error)"))
            }
            return .success(Hex.encode(state.hasher.finalize()))
        }
        let digest = try outcome.get()
        finished.withLock { $0 = digest }
    }

    func abandon() {
        state.withLock { state in
            try? state.handle?.close()
            state.handle = nil
        }
    }

    /// The SHA-256 of what was written; valid after `finish`.
    var digest: String { finished.withLock { $0 } ?? "" }
}

extension Error {
    /// The sentence of a sink's failure, or the error as it prints.
    fileprivate var reason: String { (self as? DownloadSinkFailure)?.reason ?? "\(self)" }
}
