import Foundation

/// Where a large request body waits while it arrives: its first `memoryLimit` bytes in memory, the rest in
/// a file, so an upload that stalls (or trickles until the body limits cut it off) holds a few KiB of the
/// server's memory rather than all it has sent (up to the image cap). Read back whole once complete.
///
/// The file is unlinked as soon as it is open: only the descriptor keeps it, so nothing is left behind
/// when the upload fails, is cut off or the process dies, and no sweep of the directory is needed (which
/// other nodes sharing a data dir may be writing to).
final class BodySpool {
    static let memoryLimit = 64 * 1024

    private let directory: URL
    private var memory: [UInt8] = []
    private var file: FileHandle?
    /// Everything appended so far.
    private(set) var count = 0

    init(directory: URL) {
        self.directory = directory
    }

    deinit {
        try? file?.close()
    }

    /// Bytes held in memory now: never more than `memoryLimit`.
    var bytesInMemory: Int { memory.count }

    func append(_ bytes: some Collection<UInt8>) throws {
        count += bytes.count
        if file == nil, memory.count + bytes.count <= Self.memoryLimit {
            memory.append(contentsOf: bytes)
            return
        }
        let file = try self.file ?? open()
        if !memory.isEmpty {
            try file.write(contentsOf: memory)
            memory = []
        }
        try file.write(contentsOf: Data(bytes))
    }

    /// Everything appended, in order; the file is closed.
    func finish() throws -> [UInt8] {
        guard let file else { return memory }
        defer {
            try? file.close()
            self.file = nil
        }
        try file.seek(toOffset: 0)
        let bytes = [UInt8](try file.readToEnd() ?? Data())
        guard bytes.count == count else {
            throw CocoaError(.fileReadCorruptFile, userInfo: [NSLocalizedDescriptionKey: "upload spool read back \(bytes.count) of \(count) bytes"])
        }
        return bytes
    }

    private func open() throws -> FileHandle {
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let url = directory.appending(path: "\(UUID().uuidString).upload")
        guard FileManager.default.createFile(atPath: url.path, contents: nil, attributes: [.posixPermissions: 0o600]) else {
            throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: url.path])
        }
        let handle = try FileHandle(forUpdating: url)
        do {
            try FileManager.default.removeItem(at: url)
        } catch {
            try? handle.close()
            try? FileManager.default.removeItem(at: url)
            throw error
        }
        file = handle
        return handle
    }
}
