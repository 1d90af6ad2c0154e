from proxy.launch import console_main

console_main()
