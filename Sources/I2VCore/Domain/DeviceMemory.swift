/// What a node can say in advance about fitting a job on its device: the free memory and what one latent
/// token costs. Either may be unknown (a CPU, or an operator who has not measured the cost).
package struct DeviceMemory: Sendable, Equatable {
    package var freeBytes: Int?
    package var bytesPerToken: Int?

    package init(freeBytes: Int? = nil, bytesPerToken: Int? = nil) {
        self.freeBytes = freeBytes
        self.bytesPerToken = bytesPerToken
    }
}
