package client

func (s *Server) routesDevices() {}
