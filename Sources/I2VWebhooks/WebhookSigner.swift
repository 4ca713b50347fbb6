import Crypto
import Foundation
import I2VCore
import Logging

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Signs deliveries the Standard Webhooks way: `webhook-signature: v1,<base64 HMAC-SHA256>` of
/// `{webhook-id}.{webhook-timestamp}.{body}`, keyed by the secret's bytes.
public struct WebhookSigner: Sendable {
    package let key: SymmetricKey

    public init(keyBytes: [UInt8]) {
        self.key = SymmetricKey(data: keyBytes)
    }

    /// `whsec_<base64 of the key>`, or the base64 alone (the Standard Webhooks libraries accept both).
    public init(secret: String) throws(WebhookSecretProblem) {
        let trimmed = secret.trimmingCharacters(in: .whitespacesAndNewlines)
        let encoded = trimmed.hasPrefix(WebhookSecret.prefix) ? String(trimmed.dropFirst(WebhookSecret.prefix.count)) : trimmed
        guard let bytes = Data(base64Encoded: encoded), !bytes.isEmpty else {
            throw WebhookSecretProblem(reason: "I2V_WEBHOOK_SECRET must be whsec_ followed by the key in base64 (as the Standard Webhooks libraries take it)")
        }
        guard bytes.count >= 24 else {
            throw WebhookSecretProblem(reason: "I2V_WEBHOOK_SECRET's key is \(bytes.count) bytes; Standard Webhooks asks for at least 24 (32 is usual)")
        }
        self.init(keyBytes: Array(bytes))
    }

    /// The `webhook-signature` value.
    public func signature(id: String, timestamp: Int, body: String) -> String {
        let signed = Data("\(id).\(timestamp).".utf8) + Data(body.utf8)
        let mac = HMAC<SHA256>.authenticationCode(for: signed, using: key)
        return "v1," + Data(mac).base64EncodedString()
    }

    /// The three headers of one delivery attempt.
    public func headers(id: String, timestamp: Int, body: String) -> [(name: String, value: String)] {
        [
            ("webhook-id", id),
            ("webhook-timestamp", String(timestamp)),
            ("webhook-signature", signature(id: id, timestamp: timestamp, body: body)),
        ]
    }
}

public struct WebhookSecretProblem: Error, Sendable, CustomStringConvertible {
    public var reason: String
    public var description: String { reason }

    package init(reason: String) {
        self.reason = reason
    }
}

/// The signing secret: `I2V_WEBHOOK_SECRET` when set; otherwise one generated on first start, kept in the
/// data dir (`webhook-secret`, mode 600) so every restart, and every API node sharing the data dir, signs
/// with the same key, and printed once so the receiver's operator can copy it.
package enum WebhookSecret {
    package static let prefix = "whsec_"
    package static let fileName = "webhook-secret"

    package static func load(configured: String?, dataDirectory: URL, logger: Logger) throws -> WebhookSigner {
        if let configured, !configured.isEmpty {
            do {
                return try WebhookSigner(secret: configured)
            } catch {
                throw ConfigurationProblem(error.reason)
            }
        }
        let file = dataDirectory.appending(path: fileName)
        if let stored = try? String(contentsOf: file, encoding: .utf8), let signer = try? WebhookSigner(secret: stored) {
            return signer
        }
        var generator = SystemRandomNumberGenerator()
        let key = (0..<32).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
        let secret = prefix + Data(key).base64EncodedString()
        try FileManager.default.createDirectory(at: dataDirectory, withIntermediateDirectories: true)
        // Written aside and linked into place: link(2) never replaces a file, so of two nodes starting at
        // once on a shared data dir exactly one secret wins, and the other node reads it back.
        let staging = dataDirectory.appending(path: ".\(fileName).\(RandomIdentifier.hex128())")
        defer { try? FileManager.default.removeItem(at: staging) }
        guard FileManager.default.createFile(atPath: staging.path, contents: Data((secret + "\n").utf8), attributes: [.posixPermissions: 0o600]) else {
            throw ConfigurationProblem("could not write the webhook secret to \(file.path)")
        }
        guard link(staging.path, file.path) == 0 else {
            if let stored = try? String(contentsOf: file, encoding: .utf8), let signer = try? WebhookSigner(secret: stored) {
                return signer
            }
            throw ConfigurationProblem(
                "\(file.path) holds no usable webhook secret (whsec_…); delete it to have a new one generated, or set I2V_WEBHOOK_SECRET")
        }
        // Straight to stdout, as the generated API key: shown at once, kept out of log aggregation.
        FileHandle.standardOutput.write(
            Data(
                """
                ============================================================
                Generated a webhook signing secret (shown once; kept in \(file.path)):

                    \(secret)

                Receivers verify deliveries with it (Standard Webhooks).
                Set I2V_WEBHOOK_SECRET to choose your own instead.
                ============================================================

                """.utf8))
        logger.notice("generated a webhook signing secret; it was printed once on stdout", metadata: ["file": "\(file.path)"])
        return WebhookSigner(keyBytes: key)
    }
}
