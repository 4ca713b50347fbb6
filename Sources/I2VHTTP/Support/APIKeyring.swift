import Crypto
import Foundation
import I2VCore
import I2VGPUNode
import Logging

/// The accepted API keys, kept only as SHA-256 hashes. A presented key is hashed and compared against
/// every stored hash without an early exit, so timing tells nothing about which bytes matched.
public struct APIKeyring: Sendable {
    private let hashes: [[UInt8]]

    public init(keys: [String]) {
        self.hashes = keys.map { Array(SHA256.hash(data: Data($0.utf8))) }
    }

    package init(hashes: [[UInt8]]) {
        self.hashes = hashes
    }

    /// The hex hash of `key` when it is accepted, nil otherwise.
    public func authenticate(_ key: String) -> String? {
        let presented = Array(SHA256.hash(data: Data(key.utf8)))
        var matched: [UInt8]? = nil
        for hash in hashes {
            var difference: UInt8 = 0
            for (a, b) in zip(hash, presented) { difference |= a ^ b }
            if difference == 0 { matched = hash }
        }
        return matched.map(Hex.encode)
    }

    /// Keys from `I2V_API_KEYS` when set; otherwise the key generated on first start, whose hash lives in
    /// `api-key.sha256` in the data dir. A generated key is printed once and never stored in plain text.
    public static func load(configured: [String], dataDirectory: URL, logger: Logger) throws -> APIKeyring {
        if !configured.isEmpty { return APIKeyring(keys: configured) }
        let file = dataDirectory.appending(path: "api-key.sha256")
        if let stored = try? String(contentsOf: file, encoding: .utf8) {
            let hashes = stored.split(whereSeparator: \.isNewline).compactMap { line -> [UInt8]? in
                let hex = line.trimmingCharacters(in: .whitespaces)
                return hex.count == 64 ? Hex.decode(hex) : nil
            }
            if !hashes.isEmpty { return APIKeyring(hashes: hashes) }
        }
        let key = "i2v_" + RandomIdentifier.hex128() + RandomIdentifier.hex128()
        try FileManager.default.createDirectory(at: dataDirectory, withIntermediateDirectories: true)
        let hash = Hex.encode(SHA256.hash(data: Data(key.utf8)))
        guard FileManager.default.createFile(atPath: file.path, contents: Data((hash + "\n").utf8), attributes: [.posixPermissions: 0o600]) else {
            throw ConfigurationProblem("could not write the API key hash to \(file.path)")
        }
        // Written straight to stdout (unbuffered, not logged), so it shows at once and stays out of log
        // aggregation.
        FileHandle.standardOutput.write(
            Data(
                """
                ============================================================
                Generated an API key (shown once; only its hash is kept in \(file.path)):

                    \(key)

                Use it as: Authorization: Bearer \(key)
                Set I2V_API_KEYS to choose your own keys instead.
                ============================================================

                """.utf8))
        logger.notice("generated a new API key; it was printed once on stdout", metadata: ["hash_file": "\(file.path)"])
        return APIKeyring(keys: [key])
    }
}
