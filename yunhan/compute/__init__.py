"""Instance runtimes. `netns_sandbox`: an instance as a network + UTS namespace pair with an
optional long-lived process (the network side of it is realised by `yunhan.net`)."""
