import ImageIntake

/// The use cases every API surface shares, built once from the service's parts.
package struct TaskUseCases: Sendable {
    /// What the use cases need to know of the service's configuration.
    package struct Configuration: Sendable {
        package var maxQueued: Int
        package var submitsPerMinute: Int
        /// How long a submit waits for an earlier one holding the same idempotency key.
        package var idempotencyPatience: Duration
        package var publicURL: String
        package var maxLoRARank: Int

        package init(maxQueued: Int, submitsPerMinute: Int, idempotencyPatience: Duration, publicURL: String, maxLoRARank: Int = 128) {
            self.maxQueued = maxQueued
            self.submitsPerMinute = submitsPerMinute
            self.idempotencyPatience = idempotencyPatience
            self.publicURL = publicURL
            self.maxLoRARank = maxLoRARank
        }
    }

    package let submit: SubmitTask
    package let read: ReadTask
    package let cancel: CancelTask
    package let list: ListTasks
    package let delete: DeleteTask

    package init(
        store: any TaskStore & TaskListing,
        nodes: LiveNodes,
        media: MediaStore,
        intake: ImageIntake,
        models: ModelCatalogSource,
        loras: any LoRACatalog = EmptyLoRACatalog(),
        loraURLs: (any LoRAURLStore)? = nil,
        queueChanged: DispatchSignal,
        deviceMemory: @escaping @Sendable () async -> DeviceMemory?,
        webhookOutbox: (any WebhookOutbox)?,
        metrics: ServiceMetrics,
        configuration: Configuration
    ) {
        submit = SubmitTask(
            queue: store,
            guards: store,
            media: media,
            intake: intake,
            models: models,
            loras: loras,
            loraURLs: loraURLs,
            queueChanged: queueChanged,
            deviceMemory: deviceMemory,
            metrics: metrics,
            limits: .init(
                maxQueued: configuration.maxQueued,
                submitsPerMinute: configuration.submitsPerMinute,
                idempotencyPatience: configuration.idempotencyPatience,
                maxLoRARank: configuration.maxLoRARank
            )
        )
        read = ReadTask(store: store, estimate: EstimateETA(statistics: store, nodes: nodes))
        cancel = CancelTask(store: store, media: media, queueChanged: queueChanged, metrics: metrics)
        list = ListTasks(store: store)
        delete = DeleteTask(
            store: store, media: media, queueChanged: queueChanged, metrics: metrics,
            webhooks: webhookOutbox.map { WebhookDeletionHook(outbox: $0, publicURL: configuration.publicURL) }
        )
    }
}
