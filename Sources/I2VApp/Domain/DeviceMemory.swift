/// What a node can say in advance about fitting a job on its device: the free memory and what one latent
/// token costs. Either may be unknown (a CPU, or an operator who has not measured the cost).
struct DeviceMemory: Sendable, Equatable {
    var freeBytes: Int?
    var bytesPerToken: Int?
}
