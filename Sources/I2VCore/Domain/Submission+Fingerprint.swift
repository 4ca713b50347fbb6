import Crypto
import Foundation

extension Submission {
    /// A digest of everything asked for, to tell a retried submit from a different one under the same
    /// idempotency key. Read field by field through reflection, so a field added later is covered without
    /// being listed here; image bytes go in as their own digest rather than as text.
    package var fingerprint: String {
        var hasher = SHA256()
        for child in Mirror(reflecting: self).children {
            // A last frame, when absent, adds nothing: requests without one keep the fingerprints they had.
            var value = child.value
            if child.label == "lastImage" {
                guard let image = lastImage else { continue }
                value = image
            }
            // Likewise no LoRAs, and no second expert's guidance.
            if child.label == "loras", loras.isEmpty { continue }
            if child.label == "guidanceScale2", guidanceScale2 == nil { continue }
            hasher.update(data: Data((child.label ?? "").utf8))
            hasher.update(data: [0])
            switch value {
            case let image as Image:
                switch image {
                case .url(let url): hasher.update(data: Data(("url:" + url).utf8))
                case .bytes(let bytes): hasher.update(data: Data(("bytes:" + Hex.encode(SHA256.hash(data: bytes))).utf8))
                }
            default:
                hasher.update(data: Data(String(reflecting: value).utf8))
            }
            hasher.update(data: [0])
        }
        return Hex.encode(hasher.finalize())
    }
}
