import Logging

/// Why a LoRA given by URL was not stored. Nothing of it is left in the catalog.
package struct LoRAURLFailure: Error, Sendable, Equatable {
    package enum Cause: String, Sendable, Equatable {
        /// The host is, or resolves to, a blocked address.
        case blockedAddress
        /// The file is larger than `I2V_LORA_URL_MAX_BYTES`.
        case tooLarge
        /// Anything else of the download: the URL, DNS, the connection, the status, the deadline.
        case download
        /// The bytes are not a LoRA in safetensors form.
        case notSafetensors
        /// A LoRA this job cannot use (another model's width, a rank above the limit).
        case unusable
        /// The catalog directory could not take the file.
        case storage
    }

    package var cause: Cause
    /// A sentence that follows the URL: "download failed: the host resolves to a blocked address (10.0.0.1)".
    package var reason: String

    package init(_ cause: Cause, _ reason: String) {
        self.cause = cause
        self.reason = reason
    }
}

/// Stores LoRAs that submits give by URL in the catalog, content-addressed, so a later job, or another node
/// sharing the directory, finds the same file under the same name. Downloading is the adapter's business.
package protocol LoRAURLStore: Sendable {
    /// Downloads `url`, checks it is a LoRA in safetensors form, asks `vet` whether the job can use it (a
    /// reason to refuse it, or nil), and stores it unless the catalog has it already. Returns its entry.
    func store(url: String, vet: @Sendable (LoRAEntry) -> String?, logger: Logger) async throws(LoRAURLFailure) -> LoRAEntry
}
